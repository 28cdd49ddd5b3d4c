"""PPTX: each slide's text (text boxes, placeholders, grouped shapes, tables a row a line) and
then its speaker notes, slides in the presentation's order; the title, author and times from the
package's core properties.

Streamed with lxml, not read with python-pptx: python-pptx parses every part of the package when
it opens it, so a slide of 59 MB of XML (within the default limit on what a package inflates to)
took the worker to 966 MB and 16 s before the first character was counted. Here each slide is
parsed as it streams in, a paragraph at a time, and the character limit stops it as it is
reached. (python-pptx writes the tests' presentations.)
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator

from lxml import etree

from service.errors import CorruptFile, TooLarge
from service.pipeline.blocks import Blocks
from service.pipeline.limits import CpuBudget
from service.pipeline.models import RawDocument
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
from service.pipeline.office.spreadsheet import CELL_SEPARATOR

_WHAT = "PowerPoint presentation"
_MAIN = "/officeDocument"
_SLIDE = "/slide"
_NOTES = "/notesSlide"
_PRESENTATION_BYTES = 16 << 20
"""Bytes of presentation.xml parsed at most: the list of slides and the slide size."""
_ENDS = ("{*}p", "{*}tc", "{*}tr", "{*}tbl", "{*}sp")
"""Paragraphs, table cells, rows and tables, shapes: the elements whose end is read."""
_MERGED = ("hMerge", "vMerge")
"""A cell that a merged one covers: PowerPoint lists it, empty."""
_PARAGRAPHS_BETWEEN_CHECKS = 1024


def read_pptx(data: bytes, budget: CpuBudget) -> RawDocument:
    """Slides split by blank lines; TooLarge past `max_pages` slides (counted before any is
    read), `max_chars` characters (paragraph by paragraph) or the CPU budget."""
    check_inflation(data, _WHAT)
    with open_package(data, _WHAT) as archive:
        try:
            slides = _slides(archive)
            budget.limits.check("max_pages", len(slides), "the presentation has {count:,} slides")
            blocks = Blocks(budget, "the presentation")
            for number, path in enumerate(slides, start=1):
                where = f"at slide {number} of {len(slides)}"
                budget.check(where)
                for block in _texts(archive, path, blocks, notes=False):
                    blocks.add(block, where)
                notes = next((t for k, t in relationships(archive, path) if k.endswith(_NOTES)), "")
                for block in _texts(archive, notes, blocks, notes=True) if notes else ():
                    blocks.add(block, where)
            return with_core_properties(archive, blocks.text(), len(slides))
        except (TooLarge, MemoryError, CorruptFile):
            raise
        except Exception as exc:
            raise CorruptFile(f"not a valid {_WHAT}: {exc}") from exc


def _slides(archive: zipfile.ZipFile) -> list[str]:
    """The slides' parts, in the order presentation.xml lists them."""
    path = next(
        (target for kind, target in relationships(archive, "") if kind.endswith(_MAIN)),
        "ppt/presentation.xml",
    )
    presentation = parse_part(archive, path, limit=_PRESENTATION_BYTES)
    if presentation is None:
        raise CorruptFile(f"not a valid {_WHAT}: it has no presentation part")
    targets = dict(relationship_ids(archive, path))
    slides = []
    for slide in presentation.iter("{*}sldId"):
        rid = next((v for k, v in slide.attrib.items() if str(k).endswith("}id")), None)
        kind, target = targets.get(str(rid or ""), ("", ""))
        if kind.endswith(_SLIDE):
            slides.append(target)
    return slides


def _texts(archive: zipfile.ZipFile, path: str, blocks: Blocks, notes: bool) -> Iterator[str]:
    """The text of each shape and table of a slide, in its order (back to front); of a notes
    page, only the notes (not the slide's image, nor its number)."""
    paragraphs: list[str] = []
    cell: list[str] = []
    cells: list[str] = []
    rows: list[str] = []
    pending = read = 0
    with archive.open(path) as part:
        for _, element in elements(part, _ENDS, starts=False):
            name = etree.QName(element).localname
            if name == "p":
                text = _paragraph(element)
                in_cell = _grandparent_is(element, "tc")
                release(element)
                (cell if in_cell else paragraphs).append(text)
                pending += len(text) + 1
                blocks.check(pending)
                read += 1
                if read % _PARAGRAPHS_BETWEEN_CHECKS == 0:
                    blocks.budget.check(f"in {path}")
            elif name == "tc":
                if not any(element.get(merged) == "1" for merged in _MERGED):
                    cells.append(" ".join(" ".join(cell).split()))
                cell = []
                release(element)
            elif name == "tr":
                if any(cells):
                    rows.append(CELL_SEPARATOR.join(cells))
                cells = []
                release(element)
            elif name == "tbl":
                if rows:
                    yield "\n".join(rows)
                rows, pending = [], 0
            elif name == "sp":
                text = "\n".join(paragraphs)
                if text.strip() and (not notes or _is_notes_body(element)):
                    yield text
                paragraphs, pending = [], 0
                release(element)


def _paragraph(element: etree._Element) -> str:
    """A paragraph's runs and fields, its line breaks as new lines."""
    return "".join(
        "\n" if etree.QName(child).localname == "br" else child.text or ""
        for child in element.iter("{*}t", "{*}br")
    )


def _grandparent_is(element: etree._Element, name: str) -> bool:
    parent = element.getparent()
    grandparent = parent.getparent() if parent is not None else None
    return grandparent is not None and etree.QName(grandparent).localname == name


def _is_notes_body(shape: etree._Element) -> bool:
    placeholder = shape.find("{*}nvSpPr/{*}nvPr/{*}ph")
    return placeholder is not None and placeholder.get("type") == "body"
