"""DOCX: paragraphs and tables in document order, and the title, read with python-docx."""

from __future__ import annotations

import io
from collections.abc import Iterator

import docx
from docx.table import Table, _Cell
from docx.text.paragraph import Paragraph

from service.errors import CorruptFile, TooLarge
from service.pipeline.limits import CpuBudget
from service.pipeline.models import RawDocument

_CELL_SEPARATOR = " | "
_TITLE_SEARCH_DEPTH = 20


def read_docx(data: bytes, budget: CpuBudget) -> RawDocument:
    """The body's paragraphs split by blank lines, each table row on a line of its own.

    The package's inflated size was checked by detection; characters and CPU time are checked
    block by block (and row by row), so a small file of many paragraphs stops at the limit.
    """
    try:
        document = docx.Document(io.BytesIO(data))
        blocks: list[str] = []
        chars = 0
        for block in _blocks(document.iter_inner_content(), budget):
            budget.check("in the body")
            blocks.append(block)
            chars += len(block) + 2
            budget.limits.check(
                "max_chars", chars, "the Word document holds more than {count:,} characters"
            )
        title = document.core_properties.title or _first_heading(document.paragraphs)
    except (TooLarge, MemoryError):
        raise
    except Exception as exc:
        raise CorruptFile(f"not a valid Word document: {exc}") from exc
    return RawDocument(text="\n\n".join(blocks), title=title)


def _blocks(content: Iterator[Paragraph | Table], budget: CpuBudget) -> Iterator[str]:
    """A paragraph's text, or a table's rows, one block for each item of `content`."""
    for item in content:
        if isinstance(item, Paragraph):
            yield item.text
        else:
            yield "\n".join(_row_texts(item, budget))


def _row_texts(table: Table, budget: CpuBudget) -> Iterator[str]:
    for row in table.rows:
        budget.check("in a table")
        cells = row.cells
        # A cell merged across columns is listed once for each column it spans.
        index, texts = 0, []
        while index < len(cells):
            texts.append(_cell_text(cells[index], budget))
            index += max(cells[index].grid_span, 1)
        yield _CELL_SEPARATOR.join(texts)


def _cell_text(cell: _Cell, budget: CpuBudget) -> str:
    """A cell's paragraphs and nested tables, on one line so that its row stays on one."""
    return " ".join(" ".join(block.split()) for block in _blocks(cell.iter_inner_content(), budget))


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
