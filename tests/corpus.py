"""A small corpus of test documents, built in memory, each with what extraction must find in it.

Unit and integration tests share it, so the builders' names are a contract. Every builder returns
a `Sample`; one that extraction must refuse names the error to expect in `error`. PDFs are written
with fpdf2 and DOCX files with python-docx: the corpus needs no files on disk.
"""

from __future__ import annotations

import io
import random
import zipfile
from collections.abc import Callable

import docx
import msgspec
from fpdf import FPDF
from fpdf.enums import EncryptionMethod

from bench.corpus import scan_lines, scanned_pdf
from service.errors import CorruptFile, ProcessingError, UnsupportedType
from service.pipeline import DocumentType

PDF_PAGE_PHRASES = ("amber lighthouse", "brisk meadow", "crimson harbour")


class Sample(msgspec.Struct, frozen=True, kw_only=True):
    """A test document and what extracting it must give."""

    data: bytes
    filename: str
    detected_type: DocumentType | None = None  # None where extraction must fail
    present: tuple[str, ...] = ()  # phrases the extracted text must contain
    absent: tuple[str, ...] = ()  # phrases it must not contain
    title: str | None = None
    page_count: int | None = None
    encoding: str | None = None
    error: type[ProcessingError] | None = None  # what extraction must raise instead


def pdf_sample(pages: int = 3) -> Sample:
    """A PDF of `pages` pages (at least 3), a distinct phrase on each, a word hyphenated across a
    line break on the first, and a metadata title."""
    if pages < 3:
        raise ValueError("the PDF sample has at least three pages")
    phrases = [*PDF_PAGE_PHRASES, *(f"page {n} marker" for n in range(4, pages + 1))]
    return Sample(
        data=_pdf(phrases),
        filename="report.pdf",
        detected_type="pdf",
        present=(*phrases, "The document continues"),
        absent=("docu-", "docu ment"),
        title="Corpus PDF",
        page_count=pages,
    )


SCAN_PHRASE = "lighthouse keepers count amber lanterns"


def scanned_pdf_sample(pages: int = 3) -> Sample:
    """A scan: a PDF of `pages` pages of 30 lines of prose, each page one image and no text
    layer, a known phrase first. OCR reads a page in about a second: slow enough to watch."""
    texts = [scan_lines(30, seed=page) for page in range(pages)]
    texts[0][0] = SCAN_PHRASE.capitalize()
    return Sample(
        data=scanned_pdf(texts),
        filename="scan.pdf",
        detected_type="pdf",
        present=(SCAN_PHRASE,),
        page_count=pages,
    )


def encrypted_pdf_sample() -> Sample:
    """A PDF that opens only with a password."""
    return Sample(
        data=_pdf(PDF_PAGE_PHRASES, user_password="secret"),
        filename="locked.pdf",
        error=UnsupportedType,
    )


def owner_locked_pdf_sample() -> Sample:
    """A PDF encrypted with AES but an empty user password, as viewers open without asking."""
    return Sample(
        data=_pdf(PDF_PAGE_PHRASES, owner_password="owner"),
        filename="restricted.pdf",
        detected_type="pdf",
        present=PDF_PAGE_PHRASES,
        title="Corpus PDF",
        page_count=3,
    )


def corrupt_pdf_sample() -> Sample:
    """A valid PDF header followed by garbage."""
    garbage = random.Random(1).randbytes(4096)
    return Sample(data=b"%PDF-1.7\n" + garbage, filename="broken.pdf", error=CorruptFile)


def truncated_pdf_sample() -> Sample:
    """The first half of a valid PDF."""
    whole = _pdf(PDF_PAGE_PHRASES)
    return Sample(data=whole[: len(whole) // 2], filename="cut.pdf", error=CorruptFile)


def docx_sample() -> Sample:
    """A Word document: a title property, a heading, paragraphs, and a table between them."""
    document = docx.Document()
    document.core_properties.title = "Corpus DOCX"
    document.add_heading("Quarterly summary", level=1)
    document.add_paragraph("The opening paragraph mentions a silver kettle.")
    table = document.add_table(rows=2, cols=2)
    for row, cells in enumerate((("Region", "Revenue"), ("Northern fjord", "Forty two"))):
        for column, text in enumerate(cells):
            table.cell(row, column).text = text
    document.add_paragraph("The closing paragraph mentions a velvet compass.")
    buffer = io.BytesIO()
    document.save(buffer)
    return Sample(
        data=buffer.getvalue(),
        filename="summary.docx",
        detected_type="docx",
        present=(
            "Quarterly summary",
            "silver kettle",
            "Region | Revenue",
            "Northern fjord | Forty two",
            "velvet compass",
        ),
        title="Corpus DOCX",
    )


def broken_docx_sample() -> Sample:
    """A ZIP that claims to be a Word document but whose main part is not XML."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("[Content_Types].xml", _WORD_CONTENT_TYPES)
        archive.writestr("word/document.xml", b"this is not XML <w:body")
    return Sample(data=buffer.getvalue(), filename="broken.docx", error=CorruptFile)


def plain_zip_sample() -> Sample:
    """A ZIP archive that is no Word document."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("notes.txt", "just some notes")
    return Sample(data=buffer.getvalue(), filename="notes.zip", error=UnsupportedType)


def html_sample() -> Sample:
    """A page with a title, scripts, style, noscript and template, entities, blocks and a table."""
    page = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Corpus &amp; HTML</title>
<style>.hidden { content: "STYLE_SHOULD_NOT_APPEAR"; }</style>
<script>var x = "SCRIPT_SHOULD_NOT_APPEAR"; document.write("<p>");</script>
<noscript><p>NOSCRIPT_SHOULD_NOT_APPEAR in the head</p></noscript>
</head><body><h1>Main heading</h1><p>First paragraph ends here.</p>
<script>track("SCRIPT_SHOULD_NOT_APPEAR in the body");</script>
<p>Second   paragraph&nbsp;has <b>bold</b> and <a href="/x">linked</a> words.</p>
<div>Fish &amp; chips</div><ul><li>First item</li><li>Second item</li></ul>Line one<br>Line two
<table><tr><td>Cell alpha</td><td>Cell beta</td></tr></table>
<noscript>NOSCRIPT_SHOULD_NOT_APPEAR</noscript>
<template><p>TEMPLATE_SHOULD_NOT_APPEAR</p></template>
</body></html>"""
    return Sample(
        data=page.encode(),
        filename="page.html",
        detected_type="html",
        present=(
            "First paragraph ends here.\n\nSecond paragraph has bold and linked words.",
            "Fish & chips",
            "First item",
            "Line one\nLine two",
            "Cell alpha Cell beta",
        ),
        absent=(
            "SCRIPT_SHOULD_NOT_APPEAR",
            "STYLE_SHOULD_NOT_APPEAR",
            "NOSCRIPT_SHOULD_NOT_APPEAR",
            "TEMPLATE_SHOULD_NOT_APPEAR",
            "Corpus & HTML",
            "&amp;",
            "<",
        ),
        title="Corpus & HTML",
        encoding="utf-8",
    )


def markdown_sample() -> Sample:
    """Markdown with headings, emphasis, links, a list, inline code and a fenced block."""
    text = """# Corpus Markdown

Some **bold claim** and _quiet aside_ with a [useful link](https://example.com/page).

## Details

- first point
- second point

Use `inline code` here.

```python
print("fenced code")
```
"""
    return Sample(
        data=text.encode(),
        filename="notes.txt",  # the content, not the name, makes it Markdown
        detected_type="markdown",
        present=("Corpus Markdown", "bold claim", "useful link", "first point", "fenced code"),
        absent=("#", "**", "_quiet", "](", "https://example.com", "```", "`"),
        title="Corpus Markdown",
        encoding="utf-8",
    )


def utf16_text_sample(byte_order_mark: bool = True) -> Sample:
    """Plain text in UTF-16 (little-endian), with or without a byte-order mark."""
    text = "Grüße aus Köln: naïve café, “curly quotes” and the euro sign €."
    data = text.encode("utf-16-le")
    return Sample(
        data=(b"\xff\xfe" + data) if byte_order_mark else data,
        filename="greeting.txt",
        detected_type="text",
        present=(text,),
        encoding="utf-16-le",
    )


def cp1252_text_sample() -> Sample:
    """Plain text in Windows-1252: accents, curly quotes and the euro sign."""
    text = "Le café est prêt. Une idée naïve, “entre guillemets”, coûte 5 € — voilà."
    return Sample(
        data=text.encode("cp1252"),
        filename="menu.txt",
        detected_type="text",
        present=(text,),
        encoding="cp1252",
    )


def unsupported_binary_sample() -> Sample:
    """A GIF signature followed by binary noise, named as if it were text."""
    noise = random.Random(2).randbytes(512)
    return Sample(data=b"GIF89a" + noise, filename="picture.txt", error=UnsupportedType)


def all_samples() -> dict[str, Sample]:
    """Every sample, by builder name."""
    return {build.__name__: build() for build in BUILDERS}


BUILDERS: tuple[Callable[[], Sample], ...] = (
    pdf_sample,
    encrypted_pdf_sample,
    owner_locked_pdf_sample,
    corrupt_pdf_sample,
    truncated_pdf_sample,
    docx_sample,
    broken_docx_sample,
    plain_zip_sample,
    html_sample,
    markdown_sample,
    utf16_text_sample,
    cp1252_text_sample,
    unsupported_binary_sample,
)

_WORD_CONTENT_TYPES = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
    '<Override PartName="/word/document.xml" ContentType="application/'
    'vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/></Types>'
)


def _pdf(
    phrases: tuple[str, ...] | list[str],
    *,
    user_password: str | None = None,
    owner_password: str | None = None,
) -> bytes:
    pdf = FPDF()
    pdf.set_title("Corpus PDF")
    for number, phrase in enumerate(phrases, start=1):
        pdf.add_page()
        pdf.set_font("Helvetica", size=12)
        body = f"Page {number} speaks of the {phrase}."
        if number == 1:
            body += " The docu-\nment continues on the next line."
        pdf.multi_cell(0, 8, body)
    if user_password is not None or owner_password is not None:
        pdf.set_encryption(
            owner_password=owner_password or "owner",
            user_password=user_password or "",
            encryption_method=EncryptionMethod.AES_128,
        )
    return bytes(pdf.output())
