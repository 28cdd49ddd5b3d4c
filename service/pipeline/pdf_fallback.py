"""PDF read with pypdf: the fallback for files PDFium cannot open (service.pipeline.pdf).
The text layer of every page, the page count and the info dictionary; no OCR (pypdf cannot
render a page)."""

from __future__ import annotations

import io
from datetime import datetime

from pypdf import DocumentInformation, PageObject, PasswordType, PdfReader
from pypdf.errors import LimitReachedError
from pypdf.generic import DictionaryObject

from service.errors import CorruptFile, EmptyDocument, TooLarge, UnsupportedType
from service.pipeline.limits import CpuBudget, Limits
from service.pipeline.models import RawDocument
from service.pipeline.pages import Pages


def read_pdf_with_pypdf(data: bytes, budget: CpuBudget, why: str) -> RawDocument:
    """Each page's text, pages split by a blank line; TooLarge past the budget's limits on pages,
    characters (counted page by page) and CPU time. `why` PDFium could not open it, said when
    pypdf cannot either."""
    limits = budget.limits
    reader, page_count = _open(data, limits, why)
    if page_count == 0:
        raise CorruptFile(f"not a valid PDF: it has no pages ({why})")
    limits.check("max_pages", page_count, "the PDF has {count:,} pages")
    pages = Pages(budget, "the PDF", page_count)
    for number, page in enumerate(reader.pages, start=1):
        pages.begin(number)
        pages.add(_page_text(page, number))
    if not pages.text:
        raise EmptyDocument(
            f"the PDF has no text layer, and OCR needs the page images, which only PDFium "
            f"renders ({why})"
        )
    info = _info(reader)
    return RawDocument(
        text=pages.text,
        title=str(info.title) if info is not None and info.title else None,
        page_count=page_count,
        author=str(info.author) if info is not None and info.author else None,
        created=_date(info, "creation_date"),
        modified=_date(info, "modification_date"),
    )


def _open(data: bytes, limits: Limits, why: str) -> tuple[PdfReader, int]:
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            _unlock(reader)
        # pypdf parses every page object to count them, about a millisecond each: the count the
        # page tree declares refuses a PDF of 100,000 pages in a second rather than a minute.
        tree = reader.root_object["/Pages"].get_object()
        declared = tree.get("/Count") if isinstance(tree, DictionaryObject) else None
        if isinstance(declared, int):
            limits.check("max_pages", declared, "the PDF declares {count:,} pages")
        return reader, len(reader.pages)
    except (UnsupportedType, TooLarge, MemoryError):
        raise
    except LimitReachedError as exc:
        raise _beyond_limit(exc) from exc
    except Exception as exc:
        raise CorruptFile(f"not a valid PDF (damaged or truncated): {why}; pypdf: {exc}") from exc


def _unlock(reader: PdfReader) -> None:
    """Open a PDF encrypted with an empty user password, as viewers do without asking."""
    try:
        unlocked = reader.decrypt("") != PasswordType.NOT_DECRYPTED
    except Exception as exc:
        raise UnsupportedType(f"the PDF is encrypted in a way docproc cannot open: {exc}") from exc
    if not unlocked:
        raise UnsupportedType("the PDF is protected by a password; upload it without one")


def _page_text(page: PageObject, number: int) -> str:
    try:
        return page.extract_text()
    except MemoryError:
        raise
    except LimitReachedError as exc:
        raise _beyond_limit(exc) from exc
    except Exception as exc:
        raise CorruptFile(f"page {number} of the PDF cannot be read: {exc}") from exc


def _beyond_limit(exc: LimitReachedError) -> TooLarge:
    # pypdf's guards against decompression bombs and the like.
    return TooLarge(f"the PDF exceeds a safety limit of its reader: {exc}")


def _info(reader: PdfReader) -> DocumentInformation | None:
    try:
        return reader.metadata
    except Exception:
        return None  # a damaged info dictionary costs the metadata, not the document


def _date(info: DocumentInformation | None, field: str) -> datetime | None:
    try:
        value = getattr(info, field) if info is not None else None
    except Exception:
        return None  # a date pypdf cannot parse
    return value if isinstance(value, datetime) else None
