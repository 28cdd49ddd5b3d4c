"""Generated documents for the bench: prose, HTML pages, PDFs of a chosen size and scans (text
drawn into images, PDFs of such images), reproducible.

Generated rather than shipped, so sizes are options; seeded, so two runs read the same bytes.
"""

from __future__ import annotations

import io
import random
import textwrap
from collections.abc import Sequence

from fpdf import FPDF
from PIL import Image, ImageDraw, ImageFont
from pypdf import PdfReader, PdfWriter

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


def longer_pdf(pdf: bytes, pages: int) -> bytes:
    """`pdf`'s pages over and over (each copy whole, objects and all) up to `pages` pages: a
    long PDF in a fraction of a second, where laying out as many pages takes ~12 ms each."""
    have = len(PdfReader(io.BytesIO(pdf)).pages)
    writer = PdfWriter()
    for first in range(0, pages, have):
        writer.append(PdfReader(io.BytesIO(pdf)), pages=(0, min(have, pages - first)))
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def text_image(lines: Sequence[str], *, size: int = 40, width: int = 1700) -> Image.Image:
    """`lines` drawn black on white in a `size`-pixel font, as a scanner at 200 dpi sees a
    printed page of them (a line of ~60 characters fits `width`)."""
    font = ImageFont.load_default(size=size)
    step = round(size * 1.6)
    image = Image.new("L", (width, max(1, len(lines)) * step + 2 * size), "white")
    draw = ImageDraw.Draw(image)
    for number, line in enumerate(lines):
        draw.text((size, size + number * step), line, fill="black", font=font)
    return image


def image_file(lines: Sequence[str], image_format: str) -> bytes:
    """`text_image(lines)` saved as PNG, JPEG, TIFF, WEBP or BMP."""
    out = io.BytesIO()
    text_image(lines).save(out, image_format)
    return out.getvalue()


def scanned_pdf(pages: Sequence[Sequence[str]]) -> bytes:
    """A PDF of one image a page, each the text of its lines, with no text layer (a scan)."""
    pdf = FPDF()
    for lines in pages:
        pdf.add_page()
        picture = io.BytesIO()
        text_image(lines).save(picture, "PNG")
        pdf.image(picture, x=10, y=10, w=190)
    return bytes(pdf.output())


def scan_lines(lines: int, seed: int = 0) -> list[str]:
    """`lines` lines of prose of at most 60 characters, for a page of a scan."""
    rng = random.Random(seed)
    text = " ".join(sentence(rng) for _ in range(lines))
    return textwrap.wrap(text, 60)[:lines]
