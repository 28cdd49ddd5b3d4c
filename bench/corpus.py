"""Generated documents for the bench: prose, HTML pages and PDFs of a chosen size, reproducible.

Generated rather than shipped, so sizes are options; seeded, so two runs read the same bytes.
"""

from __future__ import annotations

import random

from fpdf import FPDF

_WORDS = (
    "amber", "lighthouse", "keeper", "harbour", "meadow", "crimson", "river", "ledger",
    "quarterly", "summary", "velvet", "compass", "silver", "kettle", "northern", "fjord",
    "revenue", "archive", "signal", "thunder", "orchard", "granite", "lantern", "voyage",
    "timber", "copper", "meridian", "cobalt", "willow", "beacon", "saffron", "glacier",
    "parchment", "falcon", "ember", "quarry", "mosaic", "tundra", "citadel", "harvest",
    "ribbon", "canyon", "walnut", "estuary",
)  # fmt: skip


def sentence(rng: random.Random) -> str:
    words = [rng.choice(_WORDS) for _ in range(rng.randint(6, 16))]
    return " ".join(words).capitalize() + rng.choice(".....?!")


def paragraph(rng: random.Random) -> str:
    return " ".join(sentence(rng) for _ in range(rng.randint(3, 7)))


def text_document(size: int, seed: int = 0) -> bytes:
    """Plain prose of about `size` bytes, paragraphs split by blank lines."""
    rng = random.Random(seed)
    parts: list[str] = []
    length = 0
    while length < size:
        parts.append(paragraph(rng))
        length += len(parts[-1]) + 2
    return "\n\n".join(parts).encode()


def html_document(size: int, seed: int = 0) -> bytes:
    """A page of about `size` bytes as sites write them: head with style and script, navigation,
    headings, paragraphs with inline markup, lists, tables and entities."""
    rng = random.Random(seed)
    head = (
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>Quarterly archive</title>"
        "<style>body{font:14px sans-serif}.nav a{margin:0 4px}</style>"
        "<script>window.analytics=[];function track(e){analytics.push(e)}</script></head><body>"
        '<nav class=nav><a href="/">Home</a><a href="/archive">Archive</a></nav><main>'
    )
    blocks: list[str] = [head]
    length = len(head)
    while length < size:
        kind = rng.random()
        if kind < 0.55:
            words = paragraph(rng).split()
            for at in sorted(rng.sample(range(len(words)), min(3, len(words)))):
                tag = rng.choice(("b", "em", 'a href="/x"', "span class=k"))
                words[at] = f"<{tag}>{words[at]}</{tag.split()[0]}>"
            block = f"<p>{' '.join(words)} &amp; more&nbsp;text.</p>\n"
        elif kind < 0.7:
            block = f"<h2>{sentence(rng)}</h2>\n"
        elif kind < 0.85:
            items = "".join(f"<li>{sentence(rng)}</li>" for _ in range(rng.randint(2, 6)))
            block = f"<ul>{items}</ul>\n"
        elif kind < 0.95:
            rows = "".join(
                "<tr>" + "".join(f"<td>{rng.choice(_WORDS)}</td>" for _ in range(4)) + "</tr>"
                for _ in range(rng.randint(2, 5))
            )
            block = f"<table><tbody>{rows}</tbody></table>\n"
        else:
            script = f"<script>track('{rng.choice(_WORDS)}')</script>"
            block = f"<div class=note>{script}{sentence(rng)}</div>\n"
        blocks.append(block)
        length += len(block)
    blocks.append("</main></body></html>")
    return "".join(blocks).encode()


def pdf_document(pages: int, seed: int = 0) -> bytes:
    """A PDF of `pages` pages of prose set in Helvetica, as a report writer would make it."""
    rng = random.Random(seed)
    pdf = FPDF()
    pdf.set_title("Bench report")
    pdf.set_font("Helvetica", size=11)
    for _ in range(pages):
        pdf.add_page()
        for _ in range(4):
            pdf.multi_cell(0, 5, paragraph(rng))
            pdf.ln(3)
    return bytes(pdf.output())
