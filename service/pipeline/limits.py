"""How much of a document the pipeline will read, and the failure that names the limit reached.

Every limit is optional (None: no limit). The caller says what it calls each one — docproc's
environment variables — so that a document refused says which setting refused it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import msgspec

from service.errors import TooLarge


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """Bounds on a document's inflated size, text, pages, pixels, chunks and CPU time."""

    max_inflated_bytes: int | None = None
    """Declared uncompressed size of an office package's parts (DOCX, XLSX, PPTX, ODF), all
    together."""
    max_chars: int | None = None
    max_pages: int | None = None
    """Pages of a PDF, frames of a multi-page image."""
    max_pixels: int | None = None
    """Pixels of an image, checked from its header before it is decoded; a PDF page rendered for
    OCR is scaled to stay within it."""
    max_chunks: int | None = None
    max_cpu_seconds: float | None = None
    """CPU time of the process spent on one document, checked between pages, blocks and steps."""
    names: Mapping[str, str] = msgspec.field(default_factory=dict)
    """The caller's name for each limit (field name → environment variable), said in failures."""

    def exceeded(self, limit: str, found: str) -> TooLarge:
        """The failure for `found` beyond `limit` (a field's name), naming the limit."""
        value = getattr(self, limit)
        shown = f"{value:,}" if isinstance(value, int) else f"{value:g}"
        return TooLarge(f"{found}, more than {self.names.get(limit, limit)}={shown}")

    def check(self, limit: str, count: int, found: str) -> None:
        """Raise TooLarge when `count` is beyond `limit`; `found` says what was counted."""
        value = getattr(self, limit)
        if value is not None and count > value:
            raise self.exceeded(limit, found.format(count=count))


NO_LIMITS = Limits()


class CpuBudget:
    """`Limits.max_cpu_seconds` of process CPU time from its creation, checked between steps.

    A check between steps, not a signal: native code (lexbor, lxml, zlib) cannot be interrupted
    from Python anyway, and the shapes of input that make it slow are refused before it runs.
    """

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        seconds = limits.max_cpu_seconds
        self.deadline = None if seconds is None else time.process_time() + seconds

    def check(self, where: str) -> None:
        if self.deadline is not None and time.process_time() > self.deadline:
            raise self.limits.exceeded(
                "max_cpu_seconds", f"reading the document took too much CPU time ({where})"
            )
