"""Each guard against hostile input, fed exactly the input it guards against: bounded memory and
time, and a failure that names the limit."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c
import pytest
from celery.exceptions import SoftTimeLimitExceeded
from pypdf import PageObject

from service.errors import CorruptFile, TooLarge
from service.indexing import pipeline_limits
from service.pipeline import Limits, chunk_text, detect_type, extract
from service.pipeline.html import MAX_NESTING, nesting_depth, read_html
from service.settings import Settings
from service.worker.document_task import time_limit_in
from tests import hostile_files
from tests.corpus import docx_sample, pdf_sample
from tests.support import cpu_since, cpu_start

LIMITS = pipeline_limits(
    Settings.from_env(
        {
            "DOCPROC_MAX_INFLATED_BYTES": str(32 << 20),
            "DOCPROC_MAX_CHARS": "1000000",
            "DOCPROC_MAX_PAGES": "100",
            "DOCPROC_MAX_CHUNKS": "3",
            "DOCPROC_MAX_CPU_SECONDS": "600",
        }
    )
)


class Spent:
    """Peak memory allocated through Python, and CPU time, of one action."""

    peak_bytes = 0
    seconds = 0.0


def measure(action: Callable[[], object]) -> tuple[Spent, BaseException | None]:
    measured = Spent()
    tracemalloc.start()
    started = cpu_start()
    caught: BaseException | None = None
    try:
        action()
    except Exception as exc:
        caught = exc
    finally:
        measured.seconds = cpu_since(started)
        measured.peak_bytes = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return measured, caught


# --- point 4: the API's type detection never inflates a member whole ---------------------------


def test_detection_inflates_a_bounded_prefix_of_a_gigabyte_content_types_part() -> None:
    bomb = hostile_files.content_types_bomb(1 << 30)  # 1 MB that inflates to 1 GiB

    spent, error = measure(lambda: detect_type(bomb, "bomb.docx"))

    assert error is None, "without a limit it is still a DOCX"
    assert spent.peak_bytes < 4 << 20, f"{spent.peak_bytes:,} bytes"
    assert spent.seconds < 1


def test_detection_refuses_a_docx_declaring_more_than_the_limit_without_inflating_it() -> None:
    bomb = hostile_files.document_bomb(1 << 30)

    spent, error = measure(lambda: detect_type(bomb, "bomb.docx", LIMITS))

    assert isinstance(error, TooLarge)
    assert "inflate to 1,073,742" in str(error)
    assert "more than DOCPROC_MAX_INFLATED_BYTES=33,554,432" in str(error)
    assert spent.peak_bytes < 4 << 20


def test_a_member_declaring_more_than_deflate_can_reach_is_a_zip_bomb() -> None:
    member = ("word/document.xml", hostile_files.deflated_spaces(1 << 20), 0xFFFFFFFF, 0)
    bomb = hostile_files.zip_of([member])

    with pytest.raises(TooLarge, match="more than compression can reach"):
        detect_type(bomb, "bomb.docx")


def test_a_package_of_too_many_members_is_refused_before_zipfile_lists_them() -> None:
    package = hostile_files.many_members_zip(20_000)

    spent, error = measure(lambda: detect_type(package, "many.docx"))

    assert isinstance(error, TooLarge)
    assert "20,000 members" in str(error)
    assert spent.seconds < 0.5


# --- point 5: the worker's limits ---------------------------------------------------------------


def test_a_part_inflating_past_its_declared_size_is_corrupt_and_never_inflated_whole() -> None:
    lying = hostile_files.lying_document(256 << 20)  # declares 1 KiB

    spent, error = measure(lambda: extract(lying, "lying.docx", LIMITS))

    assert isinstance(error, CorruptFile)
    assert "inflates to more than the 1,024 bytes it declares" in str(error)
    assert spent.peak_bytes < 16 << 20, f"{spent.peak_bytes:,} bytes"


def test_a_small_docx_of_millions_of_characters_stops_at_the_character_limit() -> None:
    small = hostile_files.paragraphs_docx(100_000)  # 60 KB, 4 million characters
    assert len(small) < 100_000

    started = cpu_start()
    with pytest.raises(TooLarge, match=r"characters, more than DOCPROC_MAX_CHARS=1,000,000"):
        extract(small, "small.docx", LIMITS)

    assert cpu_since(started) < 10


def test_a_pdf_declaring_many_pages_is_refused_before_its_pages_are_read() -> None:
    pdf = hostile_files.pdf_of_pages(20_000)

    started = cpu_start()
    with pytest.raises(TooLarge, match=r"declares 20,000 pages, more than DOCPROC_MAX_PAGES=100"):
        extract(pdf, "long.pdf", LIMITS)

    assert cpu_since(started) < 5


def test_a_pdf_whose_page_count_is_within_the_limit_is_read_page_by_page() -> None:
    extracted = extract(hostile_files.pdf_of_pages(100), "hundred.pdf", LIMITS)

    assert extracted.page_count == 100
    assert extracted.text.count("hello") == 100


def test_pdf_text_beyond_the_character_limit_stops_at_the_page_that_passes_it() -> None:
    limits = Limits(max_chars=250, names={"max_chars": "DOCPROC_MAX_CHARS"})

    with pytest.raises(
        TooLarge, match="first 51 pages hold 255 characters, more than DOCPROC_MAX_CHARS=250"
    ):
        extract(hostile_files.pdf_of_pages(100), "hundred.pdf", limits)


def test_text_beyond_the_character_limit_is_too_large() -> None:
    data = ("word " * 300).encode()

    assert len(extract(data, limits=Limits(max_chars=1500)).text) == 1499
    with pytest.raises(TooLarge, match="1,499 characters of text, more than max_chars=1,000"):
        extract(data, limits=Limits(max_chars=1000))


def test_chunks_beyond_the_limit_are_too_large() -> None:
    text = "A sentence of some length. " * 200

    assert len(chunk_text(text, size=2000, overlap=100, limits=LIMITS)) == 3
    with pytest.raises(TooLarge, match="too many chunks, more than DOCPROC_MAX_CHUNKS=3"):
        chunk_text(text, size=1000, overlap=100, limits=LIMITS)


def test_the_cpu_budget_ends_the_work_between_pages_naming_its_limit() -> None:
    limits = pipeline_limits(Settings.from_env({"DOCPROC_MAX_CPU_SECONDS": "0.000001"}))

    with pytest.raises(TooLarge, match=r"CPU time \(at page 1 of 3\), more than DOCPROC_MAX_CPU"):
        extract(pdf_sample().data, "report.pdf", limits)
    with pytest.raises(TooLarge, match=r"DOCPROC_MAX_CPU_SECONDS=1e-06"):
        extract(docx_sample().data, "summary.docx", limits)


def page_text_raises(
    monkeypatch: pytest.MonkeyPatch, reader: str, exception: type[BaseException]
) -> None:
    """Make reading a page's text raise `exception`, in PDFium or in its fallback, pypdf."""

    def raising(*_: object, **__: object) -> str:
        raise exception

    if reader == "pypdf":

        def unopened(*_: object, **__: object) -> None:
            raise pdfium.PdfiumError("Failed to load document", err_code=pdfium_c.FPDF_ERR_FORMAT)

        monkeypatch.setattr(pdfium, "PdfDocument", unopened)
        monkeypatch.setattr(PageObject, "extract_text", raising)
    else:
        monkeypatch.setattr(pdfium.PdfTextPage, "get_text_range", raising)


@pytest.mark.parametrize("reader", ["pdfium", "pypdf"])
def test_running_out_of_memory_in_a_reader_is_too_large_not_corrupt(
    monkeypatch: pytest.MonkeyPatch, reader: str
) -> None:
    page_text_raises(monkeypatch, reader, MemoryError)

    with pytest.raises(TooLarge, match="ran out of memory"):
        extract(pdf_sample().data, "report.pdf")


@pytest.mark.parametrize("reader", ["pdfium", "pypdf"])
def test_a_soft_time_limit_inside_a_pdf_reader_is_reported_as_the_time_limit(
    monkeypatch: pytest.MonkeyPatch, reader: str
) -> None:
    # As Celery's signal handler raises it, wherever the task is.
    page_text_raises(monkeypatch, reader, SoftTimeLimitExceeded)

    with pytest.raises((CorruptFile, SoftTimeLimitExceeded)) as raised:
        extract(pdf_sample().data, "report.pdf")
    limit = time_limit_in(raised.value, 1800)

    assert isinstance(limit, SoftTimeLimitExceeded)
    assert str(limit) == "processing took longer than CELERY_SOFT_TIME_LIMIT=1800 s"
    assert time_limit_in(CorruptFile("truly corrupt"), 1800) is None


# --- point 6: shapes that lexbor parses in quadratic time ---------------------------------------


@pytest.mark.parametrize(
    "markup",
    [
        "<div>x" * 80_000 + "</div>" * 80_000,
        "<span></x>" * 80_000,  # end tags that close nothing walk the whole stack
        "<b>x" * 40_000 + "<p>y</p>" * 40_000,
        "<div/>x" * 80_000,  # not self-closing in HTML
        "<svg>" + "<g>" * 40_000 + "</x>" * 40_000,
    ],
    ids=["divs", "stray-end-tags", "open-formatting", "div-slash", "svg-groups"],
)
def test_deep_nesting_is_refused_in_linear_time(markup: str) -> None:
    started = cpu_start()
    with pytest.raises(
        TooLarge, match=f"nests elements .* deep; docproc reads at most {MAX_NESTING}"
    ):
        extract(f"<html><body>{markup}</body></html>".encode(), "deep.html")

    assert cpu_since(started) < 2


def test_thousands_of_options_of_one_select_are_read_in_linear_time() -> None:
    markup = "<p>Pick</p><select>" + "<option>choice</option>" * 200_000 + "</select>"

    started = cpu_start()
    text = read_html(markup).text

    assert text.count("choice") == 200_000
    assert cpu_since(started) < 3


def test_ordinary_pages_are_not_refused_for_depth() -> None:
    icon = "<svg viewBox='0 0 8 8'><path d='M0 0'/><g><path d='M1 1'/></g></svg>"
    row = "<tr><td>cell<td>cell<br><img src=x>"
    page = (
        "<html><body><script>if (a<b && c>d) { x = '<div>'; }</script>"
        + ("<p>para <b>bold</b> " + icon + "<ul><li>item<li>item</ul>") * 5000
        + "<table>" + row * 5000 + "</table></body></html>"
    )  # fmt: skip
    assert page.count("<") > 32_768

    assert nesting_depth(page) < 10
    assert read_html(page).text.count("para bold") == 5000


@pytest.mark.parametrize("depth", [MAX_NESTING, MAX_NESTING + 1])
def test_the_depth_bound_is_exact(depth: int) -> None:
    markup = "<section>x" * depth + "</section>" * depth + "<i></i>" * 40_000

    assert nesting_depth(markup) == depth
    if depth > MAX_NESTING:
        with pytest.raises(TooLarge):
            read_html(markup)
    else:
        assert read_html(markup).text.count("x") == depth


def test_a_raw_html_block_in_markdown_is_held_to_the_same_depth() -> None:
    source = "# Notes\n\nSome text.\n\n" + "<div>\n" * 40_000

    started = cpu_start()
    with pytest.raises(TooLarge, match="nests elements 40,000 deep"):
        extract(source.encode(), "notes.md")

    assert cpu_since(started) < 2


def test_docx_tables_nested_beyond_what_libxml2_parses_are_refused_at_once() -> None:
    # libxml2 stops at 256 levels of XML (the reader does not ask for XML_PARSE_HUGE), which
    # bounds nested tables and what the reader keeps for each one open.
    level = "<w:tbl><w:tr><w:tc><w:p><w:r><w:t>x</w:t></w:r></w:p>"
    nested = hostile_files.paragraphs_docx(0, body=level * 5000)

    started = cpu_start()
    with pytest.raises(CorruptFile, match="Excessive depth"):
        extract(nested, "nested.docx")

    assert cpu_since(started) < 1
