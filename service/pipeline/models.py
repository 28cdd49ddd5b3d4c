"""What the pipeline hands back: the extracted document and its chunks."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

DocumentType = Literal[
    "text",
    "markdown",
    "html",
    "pdf",
    "docx",
    "image",
    "xlsx",
    "ods",
    "pptx",
    "odp",
    "odt",
    "rtf",
    "eml",
]


class Extracted(msgspec.Struct, frozen=True, kw_only=True):
    """A document's normalised text and the metadata read along the way."""

    detected_type: DocumentType
    text: str
    title: str | None
    page_count: int | None
    encoding: str | None
    author: str | None = None
    created: datetime | None = None
    modified: datetime | None = None
    language: str | None = None
    """ISO 639-1 code of the text's language, when it could be told."""


class Chunk(msgspec.Struct, frozen=True, kw_only=True):
    """One piece of `Extracted.text`: `text == extracted.text[start:end]`."""

    position: int
    start: int
    end: int
    text: str


class RawDocument(msgspec.Struct, frozen=True, kw_only=True):
    """Text and metadata as one format's reader found them, before normalisation."""

    text: str
    title: str | None = None
    page_count: int | None = None
    author: str | None = None
    created: datetime | None = None
    modified: datetime | None = None
