"""PPTX: each slide's text (text boxes, placeholders, tables, grouped shapes) and then its
speaker notes, slides in the presentation's order, read with python-pptx; the title, author and
times from the package's core properties."""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator

import pptx
from pptx.shapes.base import BaseShape
from pptx.shapes.graphfrm import GraphicFrame
from pptx.shapes.group import GroupShape

from service.errors import CorruptFile, TooLarge
from service.pipeline.blocks import Blocks
from service.pipeline.limits import CpuBudget
from service.pipeline.models import RawDocument
from service.pipeline.office.package import check_inflation, open_package, with_core_properties
from service.pipeline.office.spreadsheet import CELL_SEPARATOR

_WHAT = "PowerPoint presentation"


def read_pptx(data: bytes, budget: CpuBudget) -> RawDocument:
    """Slides split by blank lines; TooLarge past `max_pages` slides (counted before any is
    read), `max_chars` characters (shape by shape) or the CPU budget (slide by slide)."""
    check_inflation(data, _WHAT)
    try:
        # python-pptx parses each XML part whole with its own parser, which resolves no entities;
        # their size was bounded at detection.
        presentation = pptx.Presentation(io.BytesIO(data))
        slides = presentation.slides
        budget.limits.check("max_pages", len(slides), "the presentation has {count:,} slides")
        blocks = Blocks(budget, "the presentation")
        for number, slide in enumerate(slides, start=1):
            where = f"at slide {number} of {len(slides)}"
            for text in _texts(slide.shapes):
                blocks.add(text, where)
            if slide.has_notes_slide:
                notes = slide.notes_slide.notes_text_frame
                if notes is not None and notes.text.strip():
                    blocks.add(notes.text, where)
        with open_package(data, _WHAT) as archive:
            return with_core_properties(archive, blocks.text(), len(slides))
    except (TooLarge, MemoryError):
        raise
    except Exception as exc:
        raise CorruptFile(f"not a valid {_WHAT}: {exc}") from exc


def _texts(shapes: Iterable[BaseShape]) -> Iterator[str]:
    """The text of each shape that has some, in the slide's order (back to front)."""
    for shape in shapes:
        if isinstance(shape, GroupShape):
            yield from _texts(shape.shapes)
        elif isinstance(shape, GraphicFrame) and shape.has_table:
            # A merged cell is listed once for each column it spans, the others "spanned".
            rows = (
                [" ".join(cell.text.split()) for cell in row.cells if not cell.is_spanned]
                for row in shape.table.rows
            )
            yield "\n".join(CELL_SEPARATOR.join(cells) for cells in rows if any(cells))
        elif shape.has_text_frame and shape.text_frame.text.strip():  # type: ignore[attr-defined]
            yield shape.text_frame.text  # type: ignore[attr-defined]
