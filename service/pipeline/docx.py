"""DOCX: paragraphs and tables in document order, and the title, read with python-docx."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from collections.abc import Iterator

import docx
from docx.table import Table, _Cell
from docx.text.paragraph import Paragraph

from service.errors import CorruptFile, TooLarge
from service.pipeline.limits import CpuBudget
from service.pipeline.models import RawDocument

_CELL_SEPARATOR = " | "
_TITLE_SEARCH_DEPTH = 20
_LOCAL_HEADER = struct.Struct("<4s5HIIIHH")
_INFLATE_STEP = 4096
"""Compressed bytes inflated at a time when checking a member: at most 4 MB come out of them."""


def read_docx(data: bytes, budget: CpuBudget) -> RawDocument:
    """The body's paragraphs split by blank lines, each table row on a line of its own.

    The package's inflated size was checked by detection; characters and CPU time are checked
    block by block (and row by row), so a small file of many paragraphs stops at the limit.
    """
    _check_inflation(data)
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


def _check_inflation(data: bytes) -> None:
    """CorruptFile when a part inflates to more than its declared size, found a few kilobytes at
    a time. zipfile cuts what it returns at the declared size, but python-docx reads each part
    whole, and zipfile inflates all of it before cutting: a part declaring 1 KiB could still
    take a gigabyte on the way."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
        for member in members:
            _check_member(data, member)
    except (zipfile.BadZipFile, struct.error, zlib.error, ValueError) as exc:
        raise CorruptFile(f"not a valid Word document: {exc}") from exc


def _check_member(data: bytes, member: zipfile.ZipInfo) -> None:
    header = _LOCAL_HEADER.unpack_from(data, member.header_offset)
    start = member.header_offset + _LOCAL_HEADER.size + header[-2] + header[-1]
    compressed = memoryview(data)[start : start + member.compress_size]
    if member.compress_type == zipfile.ZIP_STORED:
        produced = len(compressed)
    elif member.compress_type == zipfile.ZIP_DEFLATED:
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        produced = 0
        for offset in range(0, len(compressed), _INFLATE_STEP):
            produced += len(inflater.decompress(compressed[offset : offset + _INFLATE_STEP]))
            if produced > member.file_size:
                break
    else:
        raise CorruptFile(
            f"the part {member.filename[:100]!r} is compressed with method "
            f"{member.compress_type}; Word writes only stored and deflated parts"
        )
    if produced > member.file_size:
        raise CorruptFile(
            f"the part {member.filename[:100]!r} inflates to more than the {member.file_size:,} "
            "bytes it declares"
        )


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
