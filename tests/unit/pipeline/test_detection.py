from __future__ import annotations

import io
import random
import re
import struct
import zipfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.errors import CorruptFile, EmptyDocument, UnsupportedType
from service.pipeline import detect_type
from service.pipeline.detection import _AtLineStart
from tests.corpus import (
    docx_sample,
    html_sample,
    markdown_sample,
    pdf_sample,
    plain_zip_sample,
    unsupported_binary_sample,
)

PROSE = b"A plain note.\n\nIt has two short paragraphs and nothing else.\n"


def _zip(members: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("data", "filename", "expected"),
    [
        (pdf_sample().data, "notes.txt", "pdf"),
        (docx_sample().data, "report.pdf", "docx"),
        (html_sample().data, "readme.md", "html"),
        (markdown_sample().data, "page.html", "markdown"),
        (markdown_sample().data, None, "markdown"),
        (PROSE, "report.pdf", "text"),
        (PROSE, None, "text"),
    ],
    ids=["pdf-named-txt", "docx-named-pdf", "html-named-md", "md-named-html", "md-unnamed",
         "text-named-pdf", "text-unnamed"],
)  # fmt: skip
def test_the_content_decides_over_a_misleading_name(
    data: bytes, filename: str | None, expected: str
) -> None:
    assert detect_type(data, filename) == expected


def test_a_pdf_header_after_leading_junk_is_still_a_pdf() -> None:
    assert detect_type(b"\r\n" * 20 + pdf_sample().data) == "pdf"


@pytest.mark.parametrize("filename", ["notes.md", "NOTES.MARKDOWN"])
def test_the_markdown_suffix_breaks_the_tie_for_plain_prose(filename: str) -> None:
    assert detect_type(PROSE, filename) == "markdown"


def test_weak_markdown_hints_alone_leave_plain_text_as_text() -> None:
    shopping = b"Shopping:\n- milk\n- bread\n"

    assert detect_type(shopping, "list.txt") == "text"
    assert detect_type(shopping, "list.md") == "markdown"


def test_an_html_fragment_is_html_by_its_tags_or_its_name() -> None:
    fragment = b"<div><p>One</p><p>Two <b>bold</b></p></div>"

    assert detect_type(fragment) == "html"
    assert detect_type(b"Just <b>one</b> tag.", "page.html") == "html"
    assert detect_type(b"Just <b>one</b> tag.", "page.txt") == "text"


@pytest.mark.parametrize(
    ("data", "named"),
    [
        (unsupported_binary_sample().data, "GIF image"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(64), "RIFF media file"),
        (b"\x1f\x8b\x08\x00" + bytes(64), "gzip archive"),
        (b"\x7fELF\x02\x01\x01" + bytes(64), "executable"),
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(64), "legacy Office"),
        (plain_zip_sample().data, "ZIP archive"),
        (_zip({"[Content_Types].xml": "<Types/>", "xl/workbook.xml": "<x/>"}), "Excel"),
    ],
    ids=["gif", "wav", "gzip", "elf", "ole2", "zip", "xlsx"],
)
def test_binaries_we_cannot_read_are_unsupported_and_named(data: bytes, named: str) -> None:
    with pytest.raises(UnsupportedType, match=named):
        detect_type(data, "upload.txt")


def test_nul_heavy_data_is_binary() -> None:
    data = b"\x00\x01\x02\x03abc" * 500

    with pytest.raises(UnsupportedType, match="binary"):
        detect_type(data)


def test_sixteen_bit_numbers_are_not_mistaken_for_utf16_text() -> None:
    numbers = struct.pack("<2000H", *(n % 256 for n in range(2000)))

    with pytest.raises(UnsupportedType, match="binary"):
        detect_type(numbers)


def test_unidentified_binary_named_as_a_document_is_corrupt() -> None:
    noise = random.Random(5).randbytes(2048)

    with pytest.raises(UnsupportedType):
        detect_type(noise, "photo.bin")
    with pytest.raises(CorruptFile, match=r"named \.pdf but not a valid PDF"):
        detect_type(noise, "report.pdf")


def test_a_broken_zip_that_claims_to_be_word_is_detected_as_docx() -> None:
    whole = docx_sample().data

    assert detect_type(whole[: len(whole) // 3]) == "docx"


def test_an_empty_upload_is_an_empty_document() -> None:
    with pytest.raises(EmptyDocument):
        detect_type(b"", "empty.txt")


_LINE_PIECES = st.sampled_from(
    ["a", " ", "\t", "\n", "\r", "\n\n", "#", "## ", "-", "* ", "+", "1.", "12)", "```", "~~~",
     "|", "---", ":", "> ", ">", "x"]
)  # fmt: skip


@settings(database=None, derandomize=True, max_examples=1500, deadline=None)
@given(text=st.lists(_LINE_PIECES, max_size=30).map("".join))
def test_a_line_start_pattern_matches_where_multiline_caret_would(text: str) -> None:
    for pattern in (
        r"#{1,6}[ \t]+\S",
        r"(?:```|~~~)",
        r"\|?[ \t]*:?-{3,}:?[ \t]*\|",
        r"[ \t]*(?:[-*+]|\d{1,3}[.)])[ \t]+\S",
        r">[ \t]?\S",
    ):
        multiline = re.compile("^" + pattern, re.MULTILINE)

        assert _AtLineStart(pattern).search(text) == (multiline.search(text) is not None)
