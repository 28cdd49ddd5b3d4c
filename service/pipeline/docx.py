"""DOCX: the body's paragraphs and tables in document order, text boxes where they are
anchored, then footnotes, endnotes, headers and footers, read with python-docx; the title,
author and times from the package's core properties."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import cast

import docx
import msgspec
from docx.document import Document
from docx.opc.constants import RELATIONSHIP_TYPE as RT
from docx.oxml import parse_xml
from docx.oxml.ns import qn
from docx.oxml.text.paragraph import CT_P
from docx.table import Table, _Cell
from docx.text.paragraph import Paragraph
from lxml import etree

from service.errors import CorruptFile, TooLarge
from service.pipeline.blocks import Blocks
from service.pipeline.limits import CpuBudget
from service.pipeline.models import RawDocument
from service.pipeline.office.package import check_inflation, open_package, with_core_properties

_CELL_SEPARATOR = " | "
_TITLE_SEARCH_DEPTH = 20
_TEXT_BOXES = etree.XPath(
    "./w:r//w:txbxContent[not(ancestor::mc:Fallback)]",
    namespaces={
        "w": "http://schemas.openxmlformats.org/wordprocessingml/2006/main",
        "mc": "http://schemas.openxmlformats.org/markup-compatibility/2006",
    },
)
"""A text box's content, anchored in a run of the paragraph; Word writes each box twice, as
DrawingML and as a VML fallback, so the fallback is left out."""
_NOTES = ((RT.FOOTNOTES, "w:footnote"), (RT.ENDNOTES, "w:endnote"))
_SEPARATOR_NOTES = frozenset({"separator", "continuationSeparator", "continuationNotice"})


def read_docx(data: bytes, budget: CpuBudget) -> RawDocument:
    """The body's paragraphs split by blank lines, each table row on a line of its own, then the
    notes, headers and footers.

    The package's inflated size was checked by detection; characters and CPU time are checked
    block by block (and row by row), so a small file of many paragraphs stops at the limit.
    """
    check_inflation(data, "Word document")
    try:
        document = docx.Document(io.BytesIO(data))
        blocks = Blocks(budget, "the Word document")
        with_boxes = bool(document.element.body.xpath(".//w:txbxContent"))
        for block in _blocks(document.iter_inner_content(), budget, with_boxes):
            blocks.add(block, "in the body")
        for block in _notes(document):
            blocks.add(block, "in the notes")
        for block in _headers_and_footers(document, budget):
            blocks.add(block, "in the headers and footers")
        with open_package(data, "Word document") as archive:
            raw = with_core_properties(archive, blocks.text(), None)
        title = raw.title or _first_heading(document.paragraphs)
    except (TooLarge, MemoryError):
        raise
    except Exception as exc:
        raise CorruptFile(f"not a valid Word document: {exc}") from exc
    return msgspec.structs.replace(raw, title=title)


def _notes(document: Document) -> Iterator[str]:
    """The text of each footnote and endnote, which python-docx does not model."""
    for relationship in document.part.rels.values():
        for reltype, tag in _NOTES:
            if relationship.reltype != reltype or relationship.is_external:
                continue
            # python-docx's own parser: no entities resolved, elements it knows as its classes.
            notes = parse_xml(relationship.target_part.blob)
            for note in notes.iterchildren(qn(tag)):
                if note.get(qn("w:type")) in _SEPARATOR_NOTES:
                    continue
                yield _paragraphs_text(note, document)


def _headers_and_footers(document: Document, budget: CpuBudget) -> Iterator[str]:
    """Each header and footer once: sections that link to the previous one share its part."""
    seen: set[int] = set()
    for section in document.sections:
        for part in (
            section.first_page_header,
            section.header,
            section.even_page_header,
            section.first_page_footer,
            section.footer,
            section.even_page_footer,
        ):
            # A linked one has no definition of its own; asking for its content would add one.
            if part.is_linked_to_previous or id(part.part) in seen:
                continue
            seen.add(id(part.part))
            yield from _blocks(part.iter_inner_content(), budget, with_boxes=True)


def _blocks(
    content: Iterator[Paragraph | Table], budget: CpuBudget, with_boxes: bool
) -> Iterator[str]:
    """A paragraph's text (then its text boxes'), or a table's rows, one block for each item of
    `content`. `with_boxes` False spares looking for boxes in a body that has none."""
    for item in content:
        if isinstance(item, Paragraph):
            yield item.text
            if with_boxes:
                for box in cast(list[etree._Element], _TEXT_BOXES(item._p)):
                    yield _paragraphs_text(box, item)
        else:
            yield "\n".join(_row_texts(item, budget, with_boxes))


def _paragraphs_text(element: etree._Element, parent: Document | Paragraph) -> str:
    """The paragraphs within `element` (a note, a text box), a line each."""
    # Parsed by python-docx's parser, each <w:p> is its CT_P class.
    paragraphs = (Paragraph(cast(CT_P, p), parent) for p in element.iter(qn("w:p")))
    return "\n".join(paragraph.text for paragraph in paragraphs)


def _row_texts(table: Table, budget: CpuBudget, with_boxes: bool) -> Iterator[str]:
    for row in table.rows:
        budget.check("in a table")
        cells = row.cells
        # A cell merged across columns is listed once for each column it spans.
        index, texts = 0, []
        while index < len(cells):
            texts.append(_cell_text(cells[index], budget, with_boxes))
            index += max(cells[index].grid_span, 1)
        yield _CELL_SEPARATOR.join(texts)


def _cell_text(cell: _Cell, budget: CpuBudget, with_boxes: bool) -> str:
    """A cell's paragraphs and nested tables, on one line so that its row stays on one."""
    blocks = _blocks(cell.iter_inner_content(), budget, with_boxes)
    return " ".join(" ".join(block.split()) for block in blocks)


def _first_heading(paragraphs: list[Paragraph]) -> str | None:
    """The first Title or Heading paragraph near the top of the document."""
    # python-docx resolves a paragraph's style by searching the styles part, about a millisecond
    # each: looking further than the top of a long document would cost seconds.
    for paragraph in paragraphs[:_TITLE_SEARCH_DEPTH]:
        style = paragraph.style
        name = style.name if style is not None else None
        if name is not None and (name == "Title" or name.startswith("Heading")) and paragraph.text:
            return paragraph.text
    return None
