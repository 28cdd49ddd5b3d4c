"""XLSX: each sheet's name, then its rows, one a line, the cells that hold something separated as
in a DOCX table; the workbook's title, author and times from its core properties.

Read with lxml, streaming, not openpyxl: openpyxl's read-only worksheets pad each row with empty
cells up to the dimension the sheet declares and yield an empty row for each row number skipped,
so a sheet declaring A1:XFD1048576, or one cell at XFD1048576, makes it walk 17 billion cells.
Here only cells present in the file are visited, one at a time, and nothing read is kept.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator

from lxml import etree

from service.errors import CorruptFile, TooLarge
from service.pipeline.blocks import Blocks
from service.pipeline.limits import CpuBudget
from service.pipeline.models import RawDocument
from service.pipeline.office.number_formats import date_styles, serial_date
from service.pipeline.office.package import (
    check_inflation,
    elements,
    open_package,
    parse_part,
    relationship_ids,
    relationships,
    release,
    with_core_properties,
)

CELL_SEPARATOR = " | "
_WHAT = "Excel workbook"
_WORKSHEET = "/worksheet"
_MAIN = "/officeDocument"
_WORKBOOK_BYTES = 16 << 20
"""Bytes of the workbook and styles parts parsed at most: sheet names, and cell formats."""
_BOOLEANS = {"0": "FALSE", "1": "TRUE"}
_CELLS_BETWEEN_CHECKS = 4096
_CELL_AND_ROW = ("{*}c", "{*}row")
_ROW = "}row"


def read_xlsx(data: bytes, budget: CpuBudget) -> RawDocument:
    """Sheets in the workbook's order, each a heading (its name) and its rows; TooLarge past
    `max_pages` sheets, `max_chars` characters (counted cell by cell, shared strings included)
    or the CPU budget (checked row by row)."""
    check_inflation(data, _WHAT)
    with open_package(data, _WHAT) as archive:
        try:
            book = _Workbook(archive)
            sheets = book.sheets
            budget.limits.check("max_pages", len(sheets), "the workbook has {count:,} sheets")
            book.read_shared_strings(archive, budget)
            blocks = Blocks(budget, "the workbook")
            for name, path in sheets:
                blocks.add(name, f"at sheet {name[:40]!r}")
                for row in _rows(archive, path, book, blocks):
                    blocks.add(row, f"in sheet {name[:40]!r}", line=True)
            return with_core_properties(archive, blocks.text(), len(sheets))
        except (TooLarge, MemoryError, CorruptFile):
            raise
        except Exception as exc:
            raise CorruptFile(f"not a valid {_WHAT}: {exc}") from exc


class _Workbook:
    """What reading a cell needs: shared strings, which styles are dates, the date system."""

    def __init__(self, archive: zipfile.ZipFile) -> None:
        path = next(
            (target for kind, target in relationships(archive, "") if kind.endswith(_MAIN)),
            "xl/workbook.xml",
        )
        workbook = parse_part(archive, path, limit=_WORKBOOK_BYTES)
        if workbook is None:
            raise CorruptFile(f"not a valid {_WHAT}: it has no workbook part")
        targets = dict(relationship_ids(archive, path))
        parts = {kind.rsplit("/", 1)[-1]: target for kind, target in targets.values()}
        self.sheets: list[tuple[str, str]] = []
        """(name, part) of each worksheet, in the workbook's order."""
        for sheet in workbook.iter("{*}sheet"):
            rid = next((v for k, v in sheet.attrib.items() if str(k).endswith("}id")), None)
            kind, target = targets.get(str(rid or ""), ("", ""))
            if kind.endswith(_WORKSHEET):  # not a chart sheet, nor a dangling reference
                self.sheets.append((sheet.get("name") or "", target))
        properties = workbook.find("{*}workbookPr")
        self.date1904 = properties is not None and properties.get("date1904") in {"1", "true"}
        styles = parts.get("styles")
        self.dates = date_styles(
            parse_part(archive, styles, limit=_WORKBOOK_BYTES) if styles else None
        )
        self.shared_path = parts.get("sharedStrings")
        self.shared: list[str] = []

    def read_shared_strings(self, archive: zipfile.ZipFile, budget: CpuBudget) -> None:
        if self.shared_path:
            self.shared = _shared_strings(archive, self.shared_path, budget)


def _shared_strings(archive: zipfile.ZipFile, path: str, budget: CpuBudget) -> list[str]:
    """The workbook's table of strings, streamed; its characters count against `max_chars`
    (every one of them could be in a cell)."""
    strings: list[str] = []
    chars = 0
    with archive.open(path) as part:
        for event, element in elements(part):
            if event == "end" and etree.QName(element).localname == "si":
                strings.append(_string_item(element))
                chars += len(strings[-1])
                release(element)
                if len(strings) % _CELLS_BETWEEN_CHECKS == 0:
                    budget.check("in the shared strings")
                    budget.limits.check(
                        "max_chars",
                        chars,
                        "the workbook's shared strings hold more than {count:,} characters",
                    )
    budget.limits.check(
        "max_chars", chars, "the workbook's shared strings hold more than {count:,} characters"
    )
    return strings


def _string_item(element: etree._Element) -> str:
    """A string's text: its runs' <t>, not the phonetic guides (<rPh>) of East Asian text."""
    return "".join(
        t.text or "" for t in element.iter("{*}t") if etree.QName(t.getparent()).localname != "rPh"
    )


def _rows(archive: zipfile.ZipFile, path: str, book: _Workbook, blocks: Blocks) -> Iterator[str]:
    """Each row that holds something, as one line; cells are visited as the file lists them."""
    cells: list[str] = []
    pending = 0
    visited = 0
    with archive.open(path) as part:
        # Only the ends of cells and rows reach Python; releasing them frees what they hold.
        for _, element in elements(part, _CELL_AND_ROW, starts=False):
            if element.tag.endswith(_ROW):
                release(element)
                if cells:
                    yield CELL_SEPARATOR.join(cells)
                cells, pending = [], 0
                continue
            value = _cell_value(element, book)
            release(element)
            visited += 1
            if visited % _CELLS_BETWEEN_CHECKS == 0:
                blocks.budget.check("in a row")
            if value:
                cells.append(value)
                pending += len(value) + len(CELL_SEPARATOR)
                blocks.check(pending)


def _cell_value(cell: etree._Element, book: _Workbook) -> str:
    kind = cell.get("t", "n")
    shared = book.shared
    if kind == "inlineStr":
        inline = cell.find("{*}is")
        return _string_item(inline) if inline is not None else ""
    value = cell.findtext("{*}v") or ""
    if kind == "s" and value:
        try:
            return shared[int(value)]
        except (ValueError, IndexError) as exc:
            raise CorruptFile(
                f"not a valid {_WHAT}: cell {cell.get('r', '?')[:20]} names shared string "
                f"{value[:20]!r} of {len(shared):,}"
            ) from exc
    if kind == "b":
        return _BOOLEANS.get(value, value)
    style = cell.get("s")
    if kind == "n" and value and style and style.isdigit() and int(style) in book.dates:
        return serial_date(value, book.date1904)
    return value.strip()
