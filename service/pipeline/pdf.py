"""PDF: the text of every page, the page count and the metadata title, read with pypdf."""

from __future__ import annotations

import io

from pypdf import PageObject, PasswordType, PdfReader
from pypdf.errors import LimitReachedError
from pypdf.generic import DictionaryObject

from service.errors import CorruptFile, EmptyDocument, TooLarge, UnsupportedType
from service.pipeline.limits import CpuBudget, Limits
from service.pipeline.models import RawDocument


def read_pdf(data: bytes, budget: CpuBudget) -> RawDocument:
    """Each page's text, pages split by a blank line; TooLarge past the budget's limits on pages,
    characters (counted page by page) and CPU time."""
    limits = budget.limits
    reader, page_count = _open(data, limits)
    if page_count == 0:
        raise CorruptFile("not a valid PDF: it has no pages")
    limits.check("max_pages", page_count, "the PDF has {count:,} pages")
    pages: list[str] = []
    chars = 0
    for number, page in enumerate(reader.pages, start=1):
        budget.check(f"at page {number} of {page_count}")
        pages.append(_page_text(page, number))
        chars += len(pages[-1])
        found = f"the PDF's first {number} pages hold {{count:,}} characters"
        limits.check("max_chars", chars, found)
    text = "\n\n".join(pages)
    if text.isspace() or not text:
        raise EmptyDocument("the PDF has no text layer (a scan needs OCR, which docproc lacks)")
    return RawDocument(text=text, title=_title(reader), page_count=page_count)


def _open(data: bytes, limits: Limits) -> tuple[PdfReader, int]:
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
        raise CorruptFile(f"not a valid PDF (damaged or truncated): {exc}") from exc


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


def _title(reader: PdfReader) -> str | None:
    try:
        metadata = reader.metadata
        return str(metadata.title) if metadata is not None and metadata.title else None
    except Exception:
        return None  # a damaged info dictionary costs the title, not the document
