"""OCR: images of every kind read, scans in PDFs read and pages with text left alone, the modes,
Tesseract missing, the bounds on pixels, pages and time; and PDFium's metadata and fallback."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c
import pytest
from celery.exceptions import SoftTimeLimitExceeded
from fpdf import FPDF
from PIL import Image, ImageFile

from bench.corpus import image_file, scanned_pdf, text_image
from service import tessdata
from service.errors import EmptyDocument, OcrUnavailable, TooLarge
from service.indexing import pipeline_limits
from service.pipeline import detect_type, extract, ocr, steps
from service.pipeline.pdf import pdf_date
from service.settings import Settings
from service.worker.document_task import time_limit_in
from tests import hostile_files
from tests.corpus import pdf_sample
from tests.support import cpu_since, cpu_start

FIRST = ["Lighthouse keepers count amber lanterns", "along the northern fjord"]
SECOND = ["The copper kettle sings at midnight"]


def configured(**env: str) -> tuple[Settings, dict[str, Any]]:
    """The settings from `env`, and extract()'s limits and OCR options as the worker passes them."""
    settings = Settings.from_env(env)
    return settings, {"limits": pipeline_limits(settings), "ocr": tessdata.configured(settings)}


def words(text: str) -> set[str]:
    return {word.strip(".,!?").lower() for word in text.split()}


def expect(lines: list[str], text: str) -> None:
    missing = words(" ".join(lines)) - words(text)
    assert not missing, (missing, text)


def no_ocr(monkeypatch: pytest.MonkeyPatch) -> list[Image.Image]:
    """Record what would be read by OCR instead of reading it."""
    seen: list[Image.Image] = []

    def recognise(image: Image.Image, _: object) -> str:
        seen.append(image)
        return "read by OCR"

    monkeypatch.setattr(ocr, "recognise", recognise)
    monkeypatch.setattr("service.pipeline.pdf.recognise", recognise)
    monkeypatch.setattr("service.pipeline.images.recognise", recognise)
    return seen


@pytest.mark.parametrize("image_format", ["PNG", "JPEG", "TIFF", "WEBP", "BMP"])
def test_an_image_of_each_format_is_detected_and_read(image_format: str) -> None:
    data = image_file(FIRST, image_format)

    extracted = extract(data, "scan.bin")

    assert extracted.detected_type == "image"
    assert extracted.page_count == 1
    expect(FIRST, extracted.text)


def test_every_page_of_a_tiff_is_read_in_order() -> None:
    out = io.BytesIO()
    first, second = text_image(FIRST), text_image(SECOND)
    first.save(out, "TIFF", save_all=True, append_images=[second])

    extracted = extract(out.getvalue())

    assert extracted.page_count == 2
    expect(FIRST + SECOND, extracted.text)
    assert extracted.text.index("fjord") < extracted.text.index("kettle")


def test_a_scanned_pdf_is_read_by_ocr_page_by_page_with_progress() -> None:
    seen: list[tuple[int, int | None]] = []

    with steps.pages_watched(lambda number, total: seen.append((number, total))):
        extracted = extract(scanned_pdf([FIRST, SECOND]))

    assert extracted.detected_type == "pdf"
    assert extracted.page_count == 2
    expect(FIRST + SECOND, extracted.text)
    assert seen == [(1, 2), (2, 2)]


def test_pages_with_a_text_layer_are_not_read_by_ocr(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = no_ocr(monkeypatch)
    pdf = FPDF()
    pdf.set_font("Helvetica", size=12)
    pdf.add_page()
    pdf.cell(text="A page of text, with a picture below it.")
    picture = io.BytesIO()
    text_image(SECOND).save(picture, "PNG")
    pdf.image(picture, x=10, y=30, w=100)
    pdf.add_page()
    pdf.image(picture, x=10, y=10, w=190)  # a scanned page
    pdf.add_page()  # a blank one: no image to read

    extracted = extract(bytes(pdf.output()))

    assert len(seen) == 1
    assert extracted.text == "A page of text, with a picture below it.\n\nread by OCR"


def test_ocr_off_leaves_a_scan_empty_and_says_which_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen = no_ocr(monkeypatch)
    _, options = configured(DOCPROC_OCR="off")

    with pytest.raises(EmptyDocument, match=r"no text layer .*OCR, which is off: DOCPROC_OCR=off"):
        extract(scanned_pdf([FIRST]), **options)
    with pytest.raises(EmptyDocument, match=r"without OCR, which is off: DOCPROC_OCR=off"):
        extract(image_file(FIRST, "PNG"), **options)
    assert not seen


def test_ocr_forced_reads_every_page_even_with_text(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = no_ocr(monkeypatch)
    _, options = configured(DOCPROC_OCR="force")

    extracted = extract(pdf_sample().data, **options)

    assert len(seen) == 3
    assert extracted.text == "\n\n".join(["read by OCR"] * 3)


def test_missing_language_data_fails_the_document_saying_what_to_install(
    tmp_path: Path,
) -> None:
    settings, options = configured(TESSDATA_PREFIX=str(tmp_path), DOCPROC_OCR_LANGUAGES="eng+deu")

    with pytest.raises(OcrUnavailable) as raised:
        extract(image_file(FIRST, "PNG"), **options)

    message = str(raised.value)
    assert f"not in {tmp_path} (TESSDATA_PREFIX)" in message
    assert "install tesseract-ocr tesseract-ocr-eng tesseract-ocr-deu" in message
    assert "DOCPROC_OCR=off" in message
    assert ocr.problem(tessdata.configured(settings)) == message
    assert ocr.problem(tessdata.configured(Settings.from_env({}))) is None  # installed here


@pytest.mark.parametrize("image_format", ["PNG", "JPEG", "TIFF", "WEBP", "BMP"])
def test_an_image_beyond_the_pixel_limit_is_refused_before_it_is_decoded(
    monkeypatch: pytest.MonkeyPatch, image_format: str
) -> None:
    seen = no_ocr(monkeypatch)
    out = io.BytesIO()
    Image.new("L", (2000, 1000), "white").save(out, image_format)
    decoded: list[object] = []

    def load(image: object) -> None:
        decoded.append(image)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    _, options = configured(DOCPROC_MAX_PIXELS="1000000")

    with pytest.raises(
        TooLarge, match=r"2,000 by 1,000 pixels, more than DOCPROC_MAX_PIXELS=1,000,000"
    ):
        extract(out.getvalue(), **options)
    assert not seen
    assert not decoded


def test_a_png_declaring_ten_billion_pixels_is_refused_at_once() -> None:
    bomb = hostile_files.png_declaring(100_000, 100_000)
    assert len(bomb) < 4096
    _, options = configured()

    started = cpu_start()
    with pytest.raises(
        TooLarge, match=r"declares 10,000,000,000 pixels, more than DOCPROC_MAX_PIXELS=40,000,000"
    ):
        extract(bomb, **options)
    assert cpu_since(started) < 1


def test_a_tiff_of_many_pages_is_refused_before_any_is_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen = no_ocr(monkeypatch)
    _, options = configured(DOCPROC_MAX_PAGES="100")

    started = cpu_start()
    with pytest.raises(TooLarge, match=r"at least 101 pages, more than DOCPROC_MAX_PAGES=100"):
        extract(hostile_files.tiff_of_pages(100_000), **options)
    assert cpu_since(started) < 2
    assert not seen


def test_a_huge_scanned_page_is_rendered_within_the_pixel_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen = no_ocr(monkeypatch)
    pdf = FPDF(unit="pt", format=(14400, 14400))  # 200 inches square: 3.6 billion pixels at 300 dpi
    pdf.add_page()
    picture = io.BytesIO()
    text_image(SECOND).save(picture, "PNG")
    pdf.image(picture, x=0, y=0, w=14400)
    _, options = configured(DOCPROC_MAX_PIXELS="2000000")

    extract(bytes(pdf.output()), **options)

    (image,) = seen
    assert image.width * image.height <= 2_000_000
    assert image.width > 1400  # as large as the limit allows


def test_a_scan_whose_image_is_beyond_the_pixel_limit_is_refused_before_rendering(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen = no_ocr(monkeypatch)
    pdf = FPDF()
    pdf.add_page()
    picture = io.BytesIO()
    Image.new("L", (2000, 1000), "white").save(picture, "PNG")
    pdf.image(picture, x=10, y=10, w=190)
    _, options = configured(DOCPROC_MAX_PIXELS="1000000")

    with pytest.raises(
        TooLarge,
        match=r"an image on page 1 of the PDF is 2,000 by 1,000 pixels, more than DOCPROC_MAX_PIX",
    ):
        extract(bytes(pdf.output()), **options)
    assert not seen


@pytest.mark.parametrize("kind", ["image", "scan"])
def test_a_soft_time_limit_during_ocr_is_reported_as_the_time_limit(
    monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    def interrupted(*_: object) -> str:
        raise SoftTimeLimitExceeded  # as Celery's signal handler raises it, wherever it is

    monkeypatch.setattr("service.pipeline.pdf.recognise", interrupted)
    monkeypatch.setattr("service.pipeline.images.recognise", interrupted)
    data = image_file(FIRST, "PNG") if kind == "image" else scanned_pdf([FIRST])

    with pytest.raises(Exception) as raised:  # noqa: PT011 -- whichever the reader wraps it in
        extract(data)

    limit = time_limit_in(raised.value, 1800)
    assert str(limit) == "processing took longer than CELERY_SOFT_TIME_LIMIT=1800 s"


def test_the_cpu_budget_ends_ocr_between_pages() -> None:
    _, options = configured(DOCPROC_MAX_CPU_SECONDS="0.000001")

    with pytest.raises(TooLarge, match=r"\(at page 1 of 1\), more than DOCPROC_MAX_CPU_SECONDS"):
        extract(image_file(FIRST, "PNG"), **options)


def test_pdf_metadata_comes_from_the_info_dictionary() -> None:
    pdf = FPDF()
    pdf.set_title("Harbour ledger")
    pdf.set_author("Ada Keeper")
    pdf.set_creation_date(datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC))
    pdf.set_font("Helvetica", size=12)
    pdf.add_page()
    pdf.cell(text="Quarterly figures of the harbour.")

    extracted = extract(bytes(pdf.output()))

    assert (extracted.title, extracted.author) == ("Harbour ledger", "Ada Keeper")
    assert extracted.created == datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "moment"),
    [
        ("D:20240506070809+02'00'", datetime(2024, 5, 6, 5, 8, 9, tzinfo=UTC)),
        ("D:20240506070809-05'30", datetime(2024, 5, 6, 12, 38, 9, tzinfo=UTC)),
        ("D:20240506070809Z", datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)),
        ("D:2024", datetime(2024, 1, 1, tzinfo=UTC)),
        ("D:20241306", None),
        ("yesterday", None),
        (None, None),
    ],
)
def test_pdf_dates_are_read_into_utc(text: str | None, moment: datetime | None) -> None:
    assert pdf_date(text) == moment


def test_a_pdf_pdfium_cannot_open_is_read_by_pypdf(monkeypatch: pytest.MonkeyPatch) -> None:
    def unopened(*_: object, **__: object) -> None:
        raise pdfium.PdfiumError("Failed to load document", err_code=pdfium_c.FPDF_ERR_FORMAT)

    monkeypatch.setattr(pdfium, "PdfDocument", unopened)

    extracted = extract(pdf_sample().data)

    assert extracted.page_count == 3
    assert "crimson harbour" in extracted.text
    assert extracted.title == "Corpus PDF"


@pytest.mark.parametrize(
    ("data", "detected"),
    [
        (
            b"BM\x36\x00\x0c\x00\x00\x00\x00\x00\x36\x00\x00\x00\x28\x00\x00\x00" + bytes(40),
            "image",
        ),
        (b"BMW drivers signal less often than others, the survey says.", "text"),
        (b"RIFF\x24\x00\x00\x00WEBPVP8 " + bytes(32), "image"),
        (b"MM\x00*\x00\x00\x00\x08" + bytes(32), "image"),
    ],
    ids=["bmp", "text-starting-with-BM", "webp", "big-endian-tiff"],
)
def test_images_are_told_from_their_signature(data: bytes, detected: str) -> None:
    assert detect_type(data) == detected
