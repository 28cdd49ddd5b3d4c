"""Bytes in, normalised text and metadata out: detect, read the format, normalise, check limits."""

from __future__ import annotations

from collections.abc import Callable

from service.errors import TooLarge
from service.pipeline.detection import identify
from service.pipeline.docx import read_docx
from service.pipeline.html import read_html
from service.pipeline.images import read_image
from service.pipeline.language import detect_language
from service.pipeline.limits import NO_LIMITS, CpuBudget, Limits
from service.pipeline.mail import read_eml
from service.pipeline.markdown import read_markdown
from service.pipeline.models import DocumentType, Extracted, RawDocument
from service.pipeline.normalisation import normalise, single_line
from service.pipeline.ocr import OCR_AUTO, Ocr
from service.pipeline.office.opendocument import read_odp, read_ods, read_odt
from service.pipeline.office.presentation import read_pptx
from service.pipeline.office.spreadsheet import read_xlsx
from service.pipeline.pdf import read_pdf
from service.pipeline.rtf import read_rtf
from service.pipeline.steps import step


def _read_plain_text(text: str) -> RawDocument:
    return RawDocument(text=text)


_TEXT_READERS: dict[DocumentType, Callable[[str], RawDocument]] = {
    "text": _read_plain_text,
    "markdown": read_markdown,
    "html": read_html,
}

_BINARY_READERS: dict[DocumentType, Callable[[bytes, CpuBudget], RawDocument]] = {
    "docx": read_docx,
    "xlsx": read_xlsx,
    "pptx": read_pptx,
    "odt": read_odt,
    "ods": read_ods,
    "odp": read_odp,
    "rtf": read_rtf,
    "eml": read_eml,
}

_OCR_READERS: dict[DocumentType, Callable[[bytes, CpuBudget, Ocr], RawDocument]] = {
    "pdf": read_pdf,
    "image": read_image,
}
"""Readers of pictures of text as well: they take the OCR settings."""


def extract(
    data: bytes, filename: str | None = None, limits: Limits = NO_LIMITS, ocr: Ocr = OCR_AUTO
) -> Extracted:
    """The document's normalised text, title, page count and encoding; pages without a text
    layer and images read by OCR as `ocr` says.

    Raises UnsupportedType, CorruptFile, EmptyDocument, or TooLarge past one of `limits`, the
    failure naming it (running out of memory is TooLarge too: the document's fault, not the
    file's).
    """
    try:
        return _extract(data, filename, limits, ocr)
    except MemoryError as exc:
        raise TooLarge("reading the document ran out of memory") from exc


def _extract(data: bytes, filename: str | None, limits: Limits, ocr: Ocr) -> Extracted:
    budget = CpuBudget(limits)
    with step("detect"):
        identified = identify(data, filename, limits)
    decoded = identified.decoded
    with step("read"):
        if decoded is not None:
            raw = _TEXT_READERS[identified.detected_type](decoded.text)
        elif identified.detected_type in _OCR_READERS:
            raw = _OCR_READERS[identified.detected_type](data, budget, ocr)
        else:
            raw = _BINARY_READERS[identified.detected_type](data, budget)
    budget.check("after reading its format")
    # PDF lines are laid out by the writer, which breaks words with hyphens at line ends.
    with step("normalise"):
        text = normalise(raw.text, join_hyphenated=identified.detected_type == "pdf")
    limits.check("max_chars", len(text), "the document has {count:,} characters of text")
    with step("language"):
        language = detect_language(text)
    return Extracted(
        detected_type=identified.detected_type,
        text=text,
        title=single_line(raw.title),
        page_count=raw.page_count,
        encoding=decoded.encoding if decoded is not None else None,
        author=single_line(raw.author),
        created=raw.created,
        modified=raw.modified,
        language=language,
    )
