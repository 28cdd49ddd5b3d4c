"""PDF: the text of every page, read with PDFium (pypdfium2, Chrome's PDF engine); pages without
a usable text layer read by OCR from their rendering; the page count and the info dictionary.
pypdf reads what PDFium cannot open (service.pipeline.pdf_fallback)."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta, timezone

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c

from service.errors import CorruptFile, EmptyDocument, UnsupportedType
from service.pipeline.limits import CpuBudget, Limits
from service.pipeline.models import RawDocument
from service.pipeline.ocr import OCR_MAX_PIXELS, Ocr, recognise
from service.pipeline.pages import Pages
from service.pipeline.pdf_fallback import read_pdf_with_pypdf

USABLE_TEXT = 16
"""Non-blank characters a page's text layer needs to be used as it is: fewer, on a page that
holds an image, is a scan (perhaps with a page number or a stamp in text) and is read by OCR."""
_USABLE = re.compile(rf"(?:\s*\S){{{USABLE_TEXT}}}")
"""Matches as soon as USABLE_TEXT non-blank characters are seen: no page is scanned whole."""
OCR_DPI = 300
"""Resolution a page is rendered at for OCR, where Tesseract reads best."""
_POINTS_PER_INCH = 72

_DATE = re.compile(
    r"(?:D:)?(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:([Zz+-])(\d{2})?'?(\d{2})?'?)?"
)


def read_pdf(data: bytes, budget: CpuBudget, ocr: Ocr) -> RawDocument:
    """Each page's text, pages split by a blank line; TooLarge past the budget's limits on pages
    (the declared count, before any page is read), characters (counted page by page), pixels of
    a page rendered for OCR, and CPU time (checked between pages)."""
    try:
        document = pdfium.PdfDocument(data)  # tries the empty user password, as viewers do
    except pdfium.PdfiumError as exc:
        if exc.err_code == pdfium_c.FPDF_ERR_PASSWORD:
            raise UnsupportedType(
                "the PDF is protected by a password; upload it without one"
            ) from exc
        if exc.err_code == pdfium_c.FPDF_ERR_SECURITY:
            raise UnsupportedType(
                f"the PDF is encrypted in a way docproc cannot open: {exc}"
            ) from exc
        return read_pdf_with_pypdf(data, budget, f"PDFium cannot open it: {exc}")
    try:
        return _read(document, budget, ocr)
    finally:
        document.close()


def _read(document: pdfium.PdfDocument, budget: CpuBudget, ocr: Ocr) -> RawDocument:
    limits = budget.limits
    # PDFium takes the count the page tree declares: a PDF of 100,000 pages is refused at once.
    page_count = len(document)
    limits.check("max_pages", page_count, "the PDF declares {count:,} pages")
    pages = Pages(budget, "the PDF", page_count)
    read_by_ocr = 0
    for index in range(page_count):
        pages.begin(index + 1)
        text, by_ocr = _page_text(document, index, limits, ocr)
        pages.add(text)
        read_by_ocr += by_ocr
    if not pages.text:
        raise EmptyDocument(_why_empty(ocr, read_by_ocr))
    metadata = {key: _metadata(document, key) for key in ("Title", "Author")}
    return RawDocument(
        text=pages.text,
        title=metadata["Title"],
        page_count=page_count,
        author=metadata["Author"],
        created=pdf_date(_metadata(document, "CreationDate")),
        modified=pdf_date(_metadata(document, "ModDate")),
    )


def _page_text(
    document: pdfium.PdfDocument, index: int, limits: Limits, ocr: Ocr
) -> tuple[str, bool]:
    """The page's text, and whether OCR read it."""
    try:
        page = document[index]
    except pdfium.PdfiumError as exc:
        raise CorruptFile(f"page {index + 1} of the PDF cannot be read: {exc}") from exc
    try:
        textpage = page.get_textpage()
        try:
            # PDFium ends lines with CRLF (LF keeps normalisation on its fast path), and joins
            # a word the line broke at a hyphen, marking the join with U+FFFE: given back as
            # the line break, normalisation joins it (or keeps the hyphen of a compound) as it
            # does pypdf's text.
            raw: str = textpage.get_text_range()
            text = raw.replace("\r\n", "\n").replace("\ufffe", "-\n")
        finally:
            textpage.close()
        if ocr.mode == "force" or (ocr.mode == "auto" and _is_scan(page, text)):
            _check_images(page, limits, index + 1)
            return _ocr_page(page, limits, ocr), True
        return text, False
    finally:
        page.close()


def _is_scan(page: pdfium.PdfPage, text: str) -> bool:
    """Little or no text, and an image to read it from."""
    if _USABLE.match(text):
        return False
    images = page.get_objects(filter=[pdfium_c.FPDF_PAGEOBJ_IMAGE], max_depth=3)
    return next(images, None) is not None


def _check_images(page: pdfium.PdfPage, limits: Limits, number: int) -> None:
    """Refuse a page whose images declare more pixels than the limit: rendering decodes them."""
    for image in page.get_objects(filter=[pdfium_c.FPDF_PAGEOBJ_IMAGE], max_depth=3):
        try:
            width, height = image.get_px_size()
        except pdfium.PdfiumError:
            continue  # an image PDFium cannot size, it will not draw either
        found = f"an image on page {number} of the PDF is {width:,} by {height:,} pixels"
        limits.check("max_pixels", width * height, found)


def _ocr_page(page: pdfium.PdfPage, limits: Limits, ocr: Ocr) -> str:
    """Render the page in grey at OCR_DPI, scaled down to stay within the pixel bounds (the
    configured limit, and what Tesseract is given at most), and read it."""
    width, height = page.get_size()
    if width <= 0 or height <= 0:
        return ""
    bound = min(OCR_MAX_PIXELS, limits.max_pixels or OCR_MAX_PIXELS)
    scale = min(OCR_DPI / _POINTS_PER_INCH, (bound / (width * height)) ** 0.5)
    while math.ceil(width * scale) * math.ceil(height * scale) > bound:
        scale *= 0.999  # PDFium rounds the bitmap's sides up
    bitmap = page.render(scale=scale, grayscale=True)
    try:
        return recognise(bitmap.to_pil(), ocr)  # the image shares the bitmap's buffer
    finally:
        bitmap.close()


def _why_empty(ocr: Ocr, read_by_ocr: int) -> str:
    if ocr.mode == "off":
        return f"the PDF has no text layer (a scan needs OCR, which is off: {ocr.setting('mode')})"
    if read_by_ocr:
        return f"the PDF has no text layer, and OCR found no text on its {read_by_ocr} pages"
    return "the PDF has no text layer, and no page image for OCR to read"


def _metadata(document: pdfium.PdfDocument, key: str) -> str | None:
    try:
        value: str = document.get_metadata_value(key)
    except Exception:
        return None  # a damaged info dictionary costs the metadata, not the document
    return value or None


def pdf_date(text: str | None) -> datetime | None:
    """A PDF date (`D:YYYYMMDDHHmmSSOHH'mm'`, every part after the year optional) in UTC; None
    when it is missing or not a date."""
    match = _DATE.match(text.strip()) if text else None
    if match is None:
        return None
    year, month, day, hour, minute, second, sign, off_hours, off_minutes = match.groups()
    offset = timedelta(hours=int(off_hours or 0), minutes=int(off_minutes or 0))
    try:
        zone = timezone(-offset if sign == "-" else offset) if sign in ("+", "-") else UTC
        moment = datetime(
            int(year),
            int(month or 1),
            int(day or 1),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            tzinfo=zone,
        )
    except ValueError:
        return None  # month 13, an offset of 24 hours and the like
    return moment.astimezone(UTC)
