"""OpenDocument text, spreadsheets and presentations (ODT, ODS, ODP): content.xml streamed with
lxml, paragraphs and headings as blocks, table rows one a line (cells as in a DOCX table), each
sheet's name as a heading, each slide's text then its notes; meta.xml gives the title, author,
times and, for text, the page count.

Spreadsheets compress runs of identical cells and rows into one with a repeat count, and write
the empty rest of a sheet as a cell repeated thousands of times in a row repeated a million
times. Empty repeats are never written out; a repeated cell that holds something is, up to the
widest sheet LibreOffice makes, its characters counted against `max_chars` before it is.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable

from lxml import etree

from service.errors import CorruptFile, TooLarge, UnsupportedType
from service.pipeline.blocks import Blocks
from service.pipeline.limits import CpuBudget
from service.pipeline.models import DocumentType, RawDocument
from service.pipeline.office.package import (
    check_inflation,
    elements,
    open_package,
    parse_part,
    release,
    timestamp,
)
from service.pipeline.office.spreadsheet import CELL_SEPARATOR

_TEXT = "{urn:oasis:names:tc:opendocument:xmlns:text:1.0}"
_TABLE = "{urn:oasis:names:tc:opendocument:xmlns:table:1.0}"
_DRAW = "{urn:oasis:names:tc:opendocument:xmlns:drawing:1.0}"
_META = "{urn:oasis:names:tc:opendocument:xmlns:meta:1.0}"
_OFFICE = "{urn:oasis:names:tc:opendocument:xmlns:office:1.0}"
_DC = "{http://purl.org/dc/elements/1.1/}"

_PARAGRAPHS = frozenset({f"{_TEXT}p", f"{_TEXT}h"})
_CELLS = frozenset({f"{_TABLE}table-cell", f"{_TABLE}covered-table-cell"})
_ROW = f"{_TABLE}table-row"
_SHEET = f"{_TABLE}table"
_SLIDE = f"{_DRAW}page"
_SPACE = f"{_TEXT}s"
_LEFT_OUT = frozenset({f"{_TEXT}note-citation", f"{_OFFICE}annotation"})
"""A note's number, a comment's author and date: the paragraphs of notes and comments are read
as paragraphs of their own, after the one they are anchored in."""
_HIDDEN = frozenset({f"{_TEXT}tracked-changes"})
"""Text that is not the document's: what tracked changes deleted."""
_BREAKS = {f"{_TEXT}tab": "\t", f"{_TEXT}line-break": "\n"}
_MAX_COLUMNS = 16_384
"""Cells of a row written out at most: the widest sheet LibreOffice (and Excel) make."""
_MAX_ROWS = 1_048_576
"""Times a row is written out at most: the longest sheet they make."""
_MAX_SPACES = 64
"""Spaces one <text:s> stands for at most: normalisation folds runs of them anyway."""
_NAMES: dict[DocumentType, str] = {
    "odt": "OpenDocument text",
    "ods": "OpenDocument spreadsheet",
    "odp": "OpenDocument presentation",
}


def read_odt(data: bytes, budget: CpuBudget) -> RawDocument:
    return _read(data, budget, "odt")


def read_ods(data: bytes, budget: CpuBudget) -> RawDocument:
    return _read(data, budget, "ods")


def read_odp(data: bytes, budget: CpuBudget) -> RawDocument:
    return _read(data, budget, "odp")


def _read(data: bytes, budget: CpuBudget, kind: DocumentType) -> RawDocument:
    """content.xml streamed through zipfile, which inflates a buffer at a time and stops at each
    part's declared size: what detection checked against `max_inflated_bytes` binds. A part that
    holds more than it declares is still said to be corrupt, as in every package."""
    what = _NAMES[kind]
    check_inflation(data, what)
    with open_package(data, what) as archive:
        try:
            _refuse_encrypted(archive, what)
            content = _Content(kind, what, Blocks(budget, f"the {what}"))
            with archive.open("content.xml") as part:
                for event, element in elements(part):
                    content.handle(event, element)
            return _with_meta(archive, content.blocks.text(), content.pages, kind)
        except (TooLarge, MemoryError, UnsupportedType):
            raise
        except Exception as exc:
            raise CorruptFile(f"not a valid {what}: {exc}") from exc


def _refuse_encrypted(archive: zipfile.ZipFile, what: str) -> None:
    manifest = parse_part(archive, "META-INF/manifest.xml", limit=4 << 20)
    if manifest is not None and next(manifest.iter("{*}encryption-data"), None) is not None:
        raise UnsupportedType(f"the {what} is protected by a password; upload it without one")


class _Content:
    """What content.xml holds, gathered element by element as they end."""

    def __init__(self, kind: DocumentType, what: str, blocks: Blocks) -> None:
        self.kind = kind
        self.what = what
        self.blocks = blocks
        self.limits = blocks.budget.limits
        self.pages = 0
        self.open_paragraphs = 0
        self.hidden = 0
        self.inner: list[str] = []
        """Paragraphs inside an open one (a note's, a text box's), put after it."""
        self.cells: list[list[str]] = []
        """The paragraphs of each open cell, innermost last."""
        self.rows: list[tuple[list[str], int]] = []
        """Each open row's cells and their characters, innermost last."""
        self.table_starts = False
        self.ends: dict[str, Callable[[etree._Element], None]] = {
            **dict.fromkeys(_PARAGRAPHS, self._paragraph),
            **dict.fromkeys(_CELLS, self._cell),
            _ROW: self._row,
        }

    def handle(self, event: str, element: etree._Element) -> None:
        tag = element.tag
        if tag in _HIDDEN:
            self.hidden += 1 if event == "start" else -1
        if event == "start":
            if tag in _PARAGRAPHS:
                self.open_paragraphs += 1
            elif tag in _CELLS:
                self.cells.append([])
            elif tag == _ROW:
                self.rows.append(([], 0))
            elif tag == _SHEET:
                self.table_starts = not self.cells
                if self.kind == "ods" and not self.cells:
                    self._page(element)
            elif tag == _SLIDE and self.kind == "odp":
                self._page(element)
            return
        end = self.ends.get(str(tag))
        if end is not None:
            end(element)
        if not self.open_paragraphs:
            release(element)  # read, or of no interest (styles, forms, settings)

    def _page(self, element: etree._Element) -> None:
        """A sheet (its name a heading) or a slide begins."""
        self.pages += 1
        noun = "sheets" if self.kind == "ods" else "slides"
        found = f"the {self.what} has over {{count:,}} {noun}"
        self.limits.check("max_pages", self.pages, found)
        if self.kind == "ods":
            self.blocks.add(element.get(f"{_TABLE}name") or f"Sheet {self.pages}")

    def _paragraph(self, element: etree._Element) -> None:
        self.open_paragraphs -= 1
        text = _text(element) if not self.hidden else ""
        release(element)
        if self.hidden:
            return
        if self.open_paragraphs:
            self.inner.append(text)
            return
        texts, self.inner = [text, *self.inner], []
        if self.cells:
            self.cells[-1].extend(texts)
        else:
            for block in texts:
                self.blocks.add(block)

    def _cell(self, element: etree._Element) -> None:
        value = " ".join(" ".join(text.split()) for text in self.cells.pop())
        if not value or not self.rows:
            return
        cells, chars = self.rows[-1]
        repeated = min(_repeat(element, "number-columns-repeated"), _MAX_COLUMNS - len(cells))
        chars += repeated * (len(value) + len(CELL_SEPARATOR))
        self.blocks.check(chars)  # before a million copies are made
        cells.extend([value] * max(repeated, 0))
        self.rows[-1] = (cells, chars)

    def _row(self, element: etree._Element) -> None:
        cells, _ = self.rows.pop()
        if not cells:
            return  # an empty row, however many times repeated, is nothing
        row = CELL_SEPARATOR.join(cells)
        if self.cells:  # a table inside a cell: its rows are the cell's text
            self.cells[-1].append(row)
            return
        # A sheet's rows follow its name; a text's table is a block after a blank line.
        line, self.table_starts = self.kind == "ods" or not self.table_starts, False
        for _ in range(min(_repeat(element, "number-rows-repeated"), _MAX_ROWS)):
            self.blocks.add(row, line=line)
            line = True


def _repeat(element: etree._Element, attribute: str) -> int:
    try:
        return max(int(element.get(f"{_TABLE}{attribute}") or 1), 1)
    except ValueError:
        return 1


def _text(element: etree._Element) -> str:
    """A paragraph's text: its spans', its spaces, tabs and line breaks; not what it anchors
    (a note's body, a frame's paragraphs: those were read, and released, already)."""
    parts: list[str] = []
    _gather(element, parts)
    return "".join(parts)


def _gather(element: etree._Element, parts: list[str]) -> None:
    # libxml2 refuses XML nested more than 256 deep, which bounds this recursion.
    if element.text:
        parts.append(element.text)
    for child in element:
        tag = child.tag
        if tag == _SPACE:
            parts.append(" " * min(_repeat_spaces(child), _MAX_SPACES))
        elif tag in _BREAKS:
            parts.append(_BREAKS[str(tag)])
        elif tag not in _LEFT_OUT:
            _gather(child, parts)
        if child.tail:
            parts.append(child.tail)


def _repeat_spaces(element: etree._Element) -> int:
    try:
        return int(element.get(f"{_TEXT}c") or 1)
    except ValueError:
        return 1


def _with_meta(archive: zipfile.ZipFile, text: str, pages: int, kind: DocumentType) -> RawDocument:
    """`text` with meta.xml's title, author and times; the page count LibreOffice wrote for a
    text document, the sheets or slides for the others."""
    meta = parse_part(archive, "meta.xml")
    found = meta.find(f"{_OFFICE}meta") if meta is not None else None
    if found is None:
        return RawDocument(text=text, page_count=pages if kind != "odt" else None)
    page_count: int | None = pages
    if kind == "odt":
        statistic = found.find(f"{_META}document-statistic")
        declared = statistic.get(f"{_META}page-count") if statistic is not None else None
        page_count = int(declared) if declared and declared.isdigit() else None
    return RawDocument(
        text=text,
        page_count=page_count,
        title=found.findtext(f"{_DC}title") or None,
        author=found.findtext(f"{_META}initial-creator") or found.findtext(f"{_DC}creator") or None,
        created=timestamp(found.findtext(f"{_META}creation-date")),
        modified=timestamp(found.findtext(f"{_DC}date")),
    )
