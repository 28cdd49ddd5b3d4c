from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from datetime import UTC, datetime

import docx
import pytest

from service.errors import CorruptFile, EmptyDocument, ProcessingError, UnsupportedType
from service.pipeline import extract
from tests.corpus import (
    BUILDERS,
    PDF_PAGE_PHRASES,
    Sample,
    docx_sample,
    html_sample,
    markdown_sample,
    pdf_sample,
)

READABLE = [build for build in BUILDERS if build().error is None]
FAILING = [build for build in BUILDERS if build().error is not None]


def _docx(build: Callable[[docx.document.Document], None]) -> bytes:
    document = docx.Document()
    build(document)
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("build", READABLE, ids=lambda build: build.__name__)
def test_each_sample_yields_what_it_promises(build: Callable[[], Sample]) -> None:
    sample = build()

    extracted = extract(sample.data, sample.filename)

    assert extracted.detected_type == sample.detected_type
    assert extracted.title == sample.title
    assert extracted.page_count == sample.page_count
    for phrase in sample.present:
        assert phrase in extracted.text
    for phrase in sample.absent:
        assert phrase not in extracted.text


@pytest.mark.parametrize("build", FAILING, ids=lambda build: build.__name__)
def test_each_failing_sample_raises_its_error(build: Callable[[], Sample]) -> None:
    sample = build()
    assert sample.error is not None

    with pytest.raises(sample.error):
        extract(sample.data, sample.filename)


@pytest.mark.parametrize("build", [pdf_sample, docx_sample], ids=lambda build: build.__name__)
def test_no_library_exception_escapes_from_damaged_files(build: Callable[[], Sample]) -> None:
    sample = build()
    whole = sample.data
    for cut in range(64, len(whole), len(whole) // 25):
        for damaged in (whole[:cut], whole[:cut] + bytes(64) + whole[cut + 64 :]):
            with contextlib.suppress(ProcessingError):
                extract(damaged, sample.filename)


def test_html_drops_scripts_styles_and_markup_and_keeps_the_title_apart() -> None:
    extracted = extract(html_sample().data, "page.html")

    assert extracted.title == "Corpus & HTML"
    assert extracted.text.startswith("Main heading\n\nFirst paragraph ends here.")
    assert "Corpus" not in extracted.text


def test_html_blocks_break_lines_while_inline_elements_keep_words_whole() -> None:
    page = b"<p>Water is H<sub>2</sub>O.</p><P>Shouted</P><div>Cell<br>below</div>"

    assert extract(page, "page.html").text == "Water is H2O.\n\nShouted\n\nCell\nbelow"


def test_table_cells_are_kept_apart_on_their_row() -> None:
    page = b"<table><TR><TD>Name<td class=v>Ada</td></tr><tr><th>Born</th><th>1815</table>"

    assert extract(page, "page.html").text == "Name Ada\n\nBorn 1815"


def test_a_stray_end_tag_of_a_cell_still_parts_the_words_around_it() -> None:
    # Cut from a table (a mail's signature, say): the parser drops the tag, not the break.
    page = b"<div>Total:</td>42</div>"

    assert extract(page, "page.html").text == "Total: 42"


def test_a_title_out_of_place_in_the_body_stays_out_of_the_text() -> None:
    page = b"<head><title>Real</title></head><body><title>Stray</title><p>Body text</p></body>"

    extracted = extract(page, "page.html")

    assert (extracted.title, extracted.text) == ("Real", "Body text")


def test_html_without_a_title_has_none_even_with_an_svg_title() -> None:
    page = b"<html><body><p>Body only</p><svg><title>Close icon</title></svg></body></html>"

    extracted = extract(page)

    assert (extracted.title, extracted.text) == (None, "Body only")


def test_html_holding_only_scripts_is_empty() -> None:
    with pytest.raises(EmptyDocument):
        extract(b"<html><head><script>var a = 1;</script></head><body> </body></html>")


def test_pdf_pages_come_in_order_with_the_hyphenated_word_joined() -> None:
    extracted = extract(pdf_sample(pages=4).data)

    assert extracted.page_count == 4
    positions = [extracted.text.index(phrase) for phrase in PDF_PAGE_PHRASES]
    assert positions == sorted(positions)
    assert "The document continues on the next line." in extracted.text
    assert extracted.text.count("\n\n") == 3  # one blank line between pages


def test_a_corrupt_pdf_says_so_in_plain_words() -> None:
    with pytest.raises(CorruptFile, match="not a valid PDF") as caught:
        extract(b"%PDF-1.7\n" + b"garbage " * 100)

    assert caught.value.__cause__ is not None


def test_a_password_protected_pdf_is_refused_with_the_reason() -> None:
    from tests.corpus import encrypted_pdf_sample

    with pytest.raises(UnsupportedType, match="password"):
        extract(encrypted_pdf_sample().data)


def test_docx_keeps_paragraphs_and_table_rows_in_document_order() -> None:
    text = extract(docx_sample().data).text

    assert text.index("silver kettle") < text.index("Region | Revenue") < text.index("velvet")
    assert "Region | Revenue\nNorthern fjord | Forty two" in text


def test_docx_merged_cells_appear_once() -> None:
    def build(document: docx.document.Document) -> None:
        table = document.add_table(rows=1, cols=3)
        table.cell(0, 0).merge(table.cell(0, 1)).text = "wide cell"
        table.cell(0, 2).text = "narrow cell"

    assert extract(_docx(build)).text == "wide cell | narrow cell"


def test_docx_without_a_title_property_takes_its_first_heading() -> None:
    def build(document: docx.document.Document) -> None:
        document.add_paragraph("An opening remark.")
        document.add_heading("The real heading", level=1)
        document.add_paragraph("Body text.")

    assert extract(_docx(build)).title == "The real heading"


def test_markdown_keeps_the_words_and_drops_the_syntax() -> None:
    extracted = extract(markdown_sample().data)

    assert extracted.text.startswith(
        "Corpus Markdown\n\nSome bold claim and quiet aside with a useful link."
    )
    assert "first point\nsecond point" in extracted.text


def test_markdown_tables_keep_rows_on_lines() -> None:
    table = b"| Name | Price |\n| ---- | ----- |\n| Tea | 3 |\n| Cake | 5 |\n"

    assert extract(table, "prices.md").text == "Name | Price\nTea | 3\nCake | 5"


@pytest.mark.parametrize("data", [b" \n\t \r\n", b"\x00\x00 \x00"], ids=["spaces", "nuls"])
def test_text_that_is_only_whitespace_or_controls_is_empty(data: bytes) -> None:
    with pytest.raises((EmptyDocument, UnsupportedType)):
        extract(data, "blank.txt")


def test_whitespace_only_text_is_an_empty_document() -> None:
    with pytest.raises(EmptyDocument, match="no text"):
        extract(b"   \n\n  \t\n", "blank.txt")


def test_html_meta_gives_author_and_dates() -> None:
    page = b"""<html><head><title>Notes</title>
    <META NAME="Author" content=" Ann  Lee ">
    <meta property="article:published_time" content="2024-03-01T10:00:00+01:00">
    <meta name="dcterms.modified" content="2024-04-02">
    </head><body><p>Body text.</p></body></html>"""

    extracted = extract(page, "notes.html")

    assert extracted.author == "Ann Lee"
    assert extracted.created == datetime(2024, 3, 1, 9, 0, tzinfo=UTC)
    assert extracted.modified == datetime(2024, 4, 2, tzinfo=UTC)


@pytest.mark.parametrize("value", ["yesterday", "2024-13-01", "0001-01-01T00:00:00+01:00", ""])
def test_an_html_date_that_is_not_iso_8601_is_left_out(value: str) -> None:
    page = f'<html><head><meta name="date" content="{value}"></head><body>Text.</body></html>'

    extracted = extract(page.encode(), "page.html")

    assert extracted.created is None
    assert extracted.author is None
