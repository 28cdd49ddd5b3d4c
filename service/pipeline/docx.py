"""DOCX: the body's paragraphs and tables in document order, text boxes after the paragraph they
are anchored in, then footnotes, endnotes, headers and footers; the title, author and times from
the package's core properties, else the title from the first heading.

Streamed with lxml, not read with python-docx: python-docx parses word/document.xml whole, so a
body of 56 MB of XML (within the default limit on what a package inflates to) took the worker to
623 MB and 11 s before the first character was counted. Here each part is parsed as it streams
in, every element released once read, and the character limit stops it as it is reached.
(python-docx writes the tests' documents.)

The text is python-docx's (a paragraph's runs and hyperlinks, tabs and line breaks; a cell merged
across columns once, one merged down as the cell at its top) and a little more that python-docx
skipped: runs that tracked changes inserted or moved here, inside fields, smart tags and content
controls, and paragraphs in block content controls (a table of contents, a cover page). Text that
tracked changes deleted or moved away is left out, as before.
"""

from __future__ import annotations

import sys
import zipfile
from collections.abc import Callable

import msgspec
from lxml import etree

from service.errors import CorruptFile, TooLarge, UnsupportedType
from service.pipeline.blocks import Blocks
from service.pipeline.limits import CpuBudget
from service.pipeline.models import RawDocument
from service.pipeline.office.package import (
    check_inflation,
    elements,
    open_package,
    relationship_ids,
    relationships,
    release,
    with_core_properties,
)
from service.pipeline.office.spreadsheet import CELL_SEPARATOR

_WHAT = "Word document"
_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
_RELATIONSHIP_ID = "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}id"
_STRICT = "{http://purl.oclc.org/ooxml/wordprocessingml/main}"
_DOCUMENT = f"{_W}document"
_BODY = f"{_W}body"
_P = f"{_W}p"
_PARAGRAPH_PROPERTIES = f"{_W}pPr"
_CELL_PROPERTIES = f"{_W}tcPr"
_TYPE = f"{_W}type"
_VAL = f"{_W}val"
_HIDING = frozenset(
    {
        f"{_W}del",
        f"{_W}moveFrom",
        "{http://schemas.openxmlformats.org/markup-compatibility/2006}Fallback",
    }
)
"""What is not the document's text: runs deleted (or moved away) by tracked changes, and the
fallback copy of what Word writes twice (a text box as DrawingML, then as VML)."""
_SEPARATOR_NOTES = frozenset({"separator", "continuationSeparator", "continuationNotice"})
_HEADERS_AND_FOOTERS = tuple(
    (kind, which)
    for kind in ("headerReference", "footerReference")
    for which in ("first", "default", "even")
)
"""A section's headers then footers, in the order python-docx read them."""
_TITLE_SEARCH_DEPTH = 20
_UI_NAMES = {f"heading {level}": f"Heading {level}" for level in range(1, 10)}
"""Built-in style names as styles.xml writes them and as Word shows them."""
_ELEMENTS_BETWEEN_CHECKS = 4096
"""Elements read between checks of the CPU budget, in a paragraph of thousands of runs or of
bookmarks alike: 20-40 ms of reading bookmarks (5-9 µs an element, by machine)."""


def read_docx(data: bytes, budget: CpuBudget) -> RawDocument:
    """The body's paragraphs split by blank lines, each table row on a line of its own, then the
    notes, headers and footers; TooLarge past `max_chars` characters (counted run by run) or the
    CPU budget (checked block by block, row by row and every 4,096 elements)."""
    check_inflation(data, _WHAT)
    with open_package(data, _WHAT) as archive:
        try:
            main = next(
                (t for k, t in relationships(archive, "") if k.endswith("/officeDocument")),
                "word/document.xml",
            )
            parts = dict(relationship_ids(archive, main))
            blocks = Blocks(budget, "the Word document")
            body = _Story(blocks, "in the body", body=True)
            _stream(archive, main, body, root=_DOCUMENT)
            for kind, target in parts.values():
                if kind.endswith(("/footnotes", "/endnotes")):
                    _stream(archive, target, _Story(blocks, "in the notes", notes=True))
            _read_headers_and_footers(archive, body.sections, parts, blocks)
            raw = with_core_properties(archive, blocks.text(), None)
            styles = next((t for k, t in parts.values() if k.endswith("/styles")), None)
            title = raw.title or _first_heading(archive, styles, body.first_paragraphs)
        except (TooLarge, MemoryError, CorruptFile, UnsupportedType):
            raise
        except Exception as exc:
            raise CorruptFile(f"not a valid {_WHAT}: {exc}") from exc
    return msgspec.structs.replace(raw, title=title)


def _stream(archive: zipfile.ZipFile, path: str, story: _Story, root: str | None = None) -> None:
    """The part `path` read into `story`; its root element must be `root` when one is named."""
    with archive.open(path) as part:
        parsed = elements(part)
        for event, element in parsed:
            if root is not None and element.tag != root:
                _refuse_root(str(element.tag))
            story.handle(event, element)
            break
        for event, element in parsed:
            story.handle(event, element)


def _refuse_root(tag: str) -> None:
    if tag.startswith(_STRICT):
        raise UnsupportedType(
            f"the {_WHAT} is in Strict Open XML, which docproc does not read; save it as a "
            "Word Document (.docx)"
        )
    raise CorruptFile(f"not a valid {_WHAT}: its main part is a {tag[:100]!r}, not a document")


def _read_headers_and_footers(
    archive: zipfile.ZipFile,
    sections: list[dict[tuple[str, str], str]],
    parts: dict[str, tuple[str, str]],
    blocks: Blocks,
) -> None:
    """Each header and footer once, section by section: one that a section does not define is
    linked to the previous section's, and sections may name the same part."""
    seen: set[str] = set()
    for references in sections:
        for key in _HEADERS_AND_FOOTERS:
            _, target = parts.get(references.get(key, ""), ("", ""))
            if target and target not in seen:
                seen.add(target)
                _stream(archive, target, _Story(blocks, "in the headers and footers"))


class _Paragraph:
    __slots__ = ("boxes", "element", "parts", "record", "runs", "slot", "style")

    def __init__(self, element: etree._Element, slot: int) -> None:
        self.element = element
        self.slot = slot
        """Its line in the text box or note it is in, -1 outside them."""
        self.parts: list[str] = []
        self.runs = 0
        """Runs open: only text directly in a run of the paragraph's own is its text."""
        self.boxes: list[str] = []
        self.style: str | None = None
        self.record = False


class _Lines:
    """A text box or a note: its paragraphs, tables' included, a line each in the order they
    start."""

    __slots__ = ("element", "lines")

    def __init__(self, element: etree._Element) -> None:
        self.element = element
        self.lines: list[str] = []


class _Table:
    __slots__ = ("above", "element", "rows")

    def __init__(self, element: etree._Element) -> None:
        self.element = element
        self.rows: list[str] = []
        self.above: dict[int, tuple[str, int]] = {}
        """The text and span of the row above's cells by grid column, for vertical merges."""


class _Row:
    __slots__ = ("cells", "column", "element", "grid_before", "table", "texts")

    def __init__(self, element: etree._Element, table: _Table) -> None:
        self.element = element
        self.table = table
        self.grid_before = 0
        self.column = 0
        """Grid columns taken by the cells read so far."""
        self.texts: list[str] = []
        self.cells: dict[int, tuple[str, int]] = {}


class _Cell:
    __slots__ = ("blocks", "column", "element", "merge", "span")

    def __init__(self, element: etree._Element, column: int) -> None:
        self.element = element
        self.column = column
        self.span = 1
        self.merge: str | None = None
        self.blocks: list[str] = []


_Frame = _Paragraph | _Lines | _Table | _Row | _Cell


class _Story:
    """What one part (the body, a header, the notes) holds, gathered element by element as it
    streams in: text at the end of each run's text element, paragraphs, cells, rows and tables
    at their ends; every element released once it ends."""

    def __init__(self, blocks: Blocks, where: str, *, body: bool = False, notes: bool = False):
        self.blocks = blocks
        self.where = where
        self.notes = notes
        self.limit = blocks.budget.limits.max_chars or sys.maxsize
        self.pending = 0
        """Characters read since the last block was added."""
        self.ended = 0
        self.stack: list[_Frame] = []
        self.flat: _Lines | None = None
        """The text box or note open, whose paragraphs are lines whatever holds them."""
        self.flat_depth = 0
        """Text boxes open inside it (their paragraphs are its lines too)."""
        self.hidden = 0
        """Depth inside an element whose text is left out."""
        self.first_paragraphs: list[tuple[str | None, str]] | None = [] if body else None
        """Style and text of the body's first paragraphs, where a title may be."""
        self.sections: list[dict[tuple[str, str], str]] = []
        self.section: etree._Element | None = None
        self.references: dict[tuple[str, str], str] = {}
        self.starts: dict[str, Callable[[etree._Element], None]] = {
            _P: self._start_paragraph,
            f"{_W}r": self._start_run,
            f"{_W}tbl": self._start_table,
            f"{_W}tr": self._start_row,
            f"{_W}tc": self._start_cell,
            f"{_W}txbxContent": self._start_box,
        }
        if notes:
            self.starts[f"{_W}footnote"] = self._start_note
            self.starts[f"{_W}endnote"] = self._start_note
        if body:
            self.starts[f"{_W}sectPr"] = self._start_section
        closing = dict.fromkeys(
            (_P, f"{_W}tbl", f"{_W}tr", f"{_W}tc", f"{_W}txbxContent"), self._close
        )
        self.ends: dict[str, Callable[[etree._Element], None]] = {
            **closing,
            f"{_W}footnote": self._close,
            f"{_W}endnote": self._close,
            f"{_W}t": lambda element: self._text(element.text or ""),
            f"{_W}tab": lambda _: self._text("\t"),
            f"{_W}ptab": lambda _: self._text("\t"),
            f"{_W}cr": lambda _: self._text("\n"),
            f"{_W}noBreakHyphen": lambda _: self._text("-"),
            f"{_W}br": self._break,
            f"{_W}r": self._end_run,
            f"{_W}pStyle": self._paragraph_style,
            f"{_W}gridBefore": self._grid_before,
            f"{_W}gridSpan": self._cell_property,
            f"{_W}vMerge": self._cell_property,
            f"{_W}headerReference": self._reference,
            f"{_W}footerReference": self._reference,
            f"{_W}sectPr": self._end_section,
        }

    def handle(self, event: str, element: etree._Element) -> None:
        if event == "start":
            if self.hidden:
                self.hidden += 1
            elif element.tag in _HIDING:
                self.hidden = 1
            else:
                start = self.starts.get(element.tag)
                if start is not None:
                    start(element)
            return
        self.ended += 1
        if not self.ended % _ELEMENTS_BETWEEN_CHECKS:
            self.blocks.budget.check(self.where)
        if self.hidden:
            self.hidden -= 1
        else:
            end = self.ends.get(element.tag)
            if end is not None:
                end(element)
        release(element)

    # --- text ---------------------------------------------------------------------------------

    def _text(self, text: str) -> None:
        top = self.stack[-1] if self.stack else None
        if type(top) is _Paragraph and top.runs == 1:
            top.parts.append(text)
            self.pending += len(text)
            if self.pending + self.blocks.chars > self.limit:
                self.blocks.check(self.pending)

    def _break(self, element: etree._Element) -> None:
        """A line break; a page or column break is no text."""
        self._text("\n" if element.get(_TYPE, "textWrapping") == "textWrapping" else "")

    def _start_run(self, element: etree._Element) -> None:
        top = self.stack[-1] if self.stack else None
        if type(top) is _Paragraph:
            top.runs += 1

    def _end_run(self, element: etree._Element) -> None:
        top = self.stack[-1] if self.stack else None
        if type(top) is _Paragraph and top.runs:
            top.runs -= 1

    def _put(self, text: str) -> None:
        """A paragraph's or a table's text, into what holds it."""
        top = self.stack[-1] if self.stack else None
        if top is None:
            self.blocks.add(text, self.where)
            self.pending = 0
        elif type(top) is _Cell:
            top.blocks.append(text)
        elif type(top) is _Paragraph:  # a paragraph directly in another, as a box would be
            top.boxes.append(text)

    # --- paragraphs, text boxes, notes --------------------------------------------------------

    def _start_paragraph(self, element: etree._Element) -> None:
        slot = -1
        if self.flat is not None:
            slot = len(self.flat.lines)
            self.flat.lines.append("")
        paragraph = _Paragraph(element, slot)
        first = self.first_paragraphs
        if first is not None and len(first) < _TITLE_SEARCH_DEPTH and not self.stack:
            parent = element.getparent()
            paragraph.record = parent is not None and parent.tag == _BODY
        self.stack.append(paragraph)

    def _paragraph_style(self, element: etree._Element) -> None:
        top = self.stack[-1] if self.stack else None
        if type(top) is _Paragraph and top.style is None and not top.runs:
            top.style = element.get(_VAL)

    def _start_box(self, element: etree._Element) -> None:
        if self.flat is not None:
            self.flat_depth += 1
        else:
            self.flat = _Lines(element)
            self.stack.append(self.flat)

    def _start_note(self, element: etree._Element) -> None:
        if self.stack or self.flat is not None:
            return
        if element.get(_TYPE) in _SEPARATOR_NOTES:
            self.hidden = 1
            return
        self.flat = _Lines(element)
        self.stack.append(self.flat)

    # --- tables -------------------------------------------------------------------------------

    def _start_table(self, element: etree._Element) -> None:
        top = self.stack[-1] if self.stack else None
        if self.flat is None and (top is None or type(top) is _Cell):
            self.stack.append(_Table(element))

    def _start_row(self, element: etree._Element) -> None:
        top = self.stack[-1] if self.stack else None
        if type(top) is _Table:
            self.stack.append(_Row(element, top))

    def _start_cell(self, element: etree._Element) -> None:
        top = self.stack[-1] if self.stack else None
        if type(top) is _Row:
            self.stack.append(_Cell(element, top.grid_before + top.column))

    def _grid_before(self, element: etree._Element) -> None:
        top = self.stack[-1] if self.stack else None
        if type(top) is _Row and not top.column:
            top.grid_before = _number(element.get(_VAL), 0)

    def _cell_property(self, element: etree._Element) -> None:
        """A cell's span across grid columns, or its place in a vertical merge: from the cell's
        own properties, not from a tracked change's record of the old ones."""
        top = self.stack[-1] if self.stack else None
        parent = element.getparent()
        if type(top) is not _Cell or parent is None or parent.tag != _CELL_PROPERTIES:
            return
        if parent.getparent() is not top.element:
            return
        if element.tag == f"{_W}gridSpan":
            top.span = _number(element.get(_VAL), 1)
        else:
            top.merge = element.get(_VAL, "continue")

    # --- the end of what was opened -----------------------------------------------------------

    def _close(self, element: etree._Element) -> None:
        if not self.stack or self.stack[-1].element is not element:
            if element.tag == f"{_W}txbxContent" and self.flat_depth:
                self.flat_depth -= 1
            return
        frame = self.stack.pop()
        if type(frame) is _Paragraph:
            self._close_paragraph(frame)
        elif type(frame) is _Lines:
            self.flat = None
            text = "\n".join(frame.lines)
            top = self.stack[-1] if self.stack else None
            if type(top) is _Paragraph:
                top.boxes.append(text)
            else:
                self._put(text)
        elif type(frame) is _Cell:
            self._close_cell(frame)
        elif type(frame) is _Row:
            frame.table.rows.append(CELL_SEPARATOR.join(frame.texts))
            frame.table.above = frame.cells
            self.blocks.budget.check("in a table")
        elif type(frame) is _Table:
            self._put("\n".join(frame.rows))

    def _close_paragraph(self, paragraph: _Paragraph) -> None:
        text = "".join(paragraph.parts)
        if paragraph.record and self.first_paragraphs is not None:
            self.first_paragraphs.append((paragraph.style, text))
        if paragraph.slot >= 0 and self.flat is not None:
            self.flat.lines[paragraph.slot] = text
            return
        self._put(text)
        for box in paragraph.boxes:
            self._put(box)

    def _close_cell(self, cell: _Cell) -> None:
        """A cell's paragraphs and nested tables, on one line so that its row stays on one; a
        cell merged across columns once, one merged with those above it as the top one."""
        row = self.stack[-1]
        assert type(row) is _Row
        if cell.merge == "continue":
            text, span = row.table.above.get(cell.column, ("", 1))
        else:
            text = " ".join(" ".join(block.split()) for block in cell.blocks)
            span = cell.span
        row.cells[cell.column] = (text, span)
        if span >= 1:
            row.texts.append(text)
        row.column += cell.span

    # --- sections -----------------------------------------------------------------------------

    def _start_section(self, element: etree._Element) -> None:
        """A section's properties: at the end of the body, or in the last paragraph of each
        section but the last."""
        parent = element.getparent()
        if parent is not None and parent.tag == _PARAGRAPH_PROPERTIES:
            paragraph = parent.getparent()
            parent = paragraph.getparent() if paragraph is not None else None
        if parent is not None and parent.tag == _BODY:
            self.section = element
            self.references = {}

    def _reference(self, element: etree._Element) -> None:
        which = element.get(_TYPE)
        if self.section is None or which is None or element.getparent() is not self.section:
            return
        kind = etree.QName(element).localname
        self.references.setdefault((kind, which), element.get(_RELATIONSHIP_ID) or "")

    def _end_section(self, element: etree._Element) -> None:
        if element is self.section:
            self.sections.append(self.references)
            self.section = None


def _number(value: str | None, default: int) -> int:
    try:
        return int(value or default)
    except ValueError:
        return default


def _first_heading(
    archive: zipfile.ZipFile, styles: str | None, paragraphs: list[tuple[str | None, str]] | None
) -> str | None:
    """The first Title or Heading paragraph near the top of the body."""
    candidates = [(style, text) for style, text in paragraphs or () if text]
    if not candidates:
        return None
    if styles is None:
        # Without a styles part, Word's built-in ids ("Title", "Heading1") say as much as names.
        names: dict[str, str | None] = {style: style for style, _ in candidates if style}
        default = None
    else:
        names, default = _paragraph_styles(archive, styles)
    for style, text in candidates:
        # A paragraph naming no style, or one that is not a paragraph style, has the default.
        name = names.get(style or "", default)
        if name is not None and (name == "Title" or name.startswith("Heading")):
            return text
    return None


def _paragraph_styles(
    archive: zipfile.ZipFile, path: str
) -> tuple[dict[str, str | None], str | None]:
    """The name of each paragraph style by its id, and the default paragraph style's; streamed,
    as the styles part can be large."""
    names: dict[str, str | None] = {}
    default = None
    with archive.open(path) as part:
        for _, style in elements(part, (f"{_W}style",), starts=False):
            found = style.find(f"{_W}name")
            name = found.get(_VAL) if found is not None else None
            name = _UI_NAMES.get(name, name) if name is not None else None
            paragraph = style.get(_TYPE) == "paragraph"
            identifier = style.get(f"{_W}styleId")
            if paragraph and identifier is not None and identifier not in names:
                names[identifier] = name
            if paragraph and style.get(f"{_W}default") in {"1", "true", "on"}:
                default = name
            release(style)
    return names, default
