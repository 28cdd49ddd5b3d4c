"""Hostile documents, built in memory in a fraction of a second: ZIP bombs, a DOCX that inflates
into millions of characters, a PDF of many pages, deeply nested HTML. Unit and end-to-end tests
share them; nothing large is ever written to the repository."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib

import docx

WORD_CONTENT_TYPES = (
    b'<?xml version="1.0" encoding="UTF-8"?>'
    b'<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
    b'<Override PartName="/word/document.xml" ContentType="application/'
    b'vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/></Types>'
)
_RUN = 1 << 20


def deflated_spaces(size: int) -> bytes:
    """A raw deflate stream of `size` spaces (a multiple of 1 MiB), made without inflating it:
    one sync-flushed block of a mebibyte, repeated, and an empty final block."""
    if size % _RUN:
        raise ValueError(f"size must be a multiple of {_RUN}")
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(b" " * _RUN) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return block * (size // _RUN) + b"\x03\x00"


def zip_of(members: list[tuple[str, bytes, int, int]]) -> bytes:
    """A ZIP of (name, raw deflate data, declared uncompressed size, CRC) members, written by
    hand so that the declared sizes can be anything."""
    out = io.BytesIO()
    directory = io.BytesIO()
    for name, deflated, declared, crc in members:
        encoded = name.encode()
        offset = out.tell()
        sizes = struct.pack("<III", crc, len(deflated), declared)
        out.write(struct.pack("<4s5H", b"PK\x03\x04", 20, 0, 8, 0, 0) + sizes)
        out.write(struct.pack("<HH", len(encoded), 0) + encoded + deflated)
        directory.write(struct.pack("<4s6H", b"PK\x01\x02", 20, 20, 0, 8, 0, 0) + sizes)
        directory.write(struct.pack("<5HII", len(encoded), 0, 0, 0, 0, 0, offset) + encoded)
    start, listing = out.tell(), directory.getvalue()
    out.write(listing)
    count = len(members)
    out.write(struct.pack("<4s4HIIH", b"PK\x05\x06", 0, 0, count, count, len(listing), start, 0))
    return out.getvalue()


def _deflated(data: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush()


def _member(name: str, data: bytes) -> tuple[str, bytes, int, int]:
    """A member whose sizes and CRC are true."""
    return (name, _deflated(data), len(data), zlib.crc32(data))


# The CRC of a bomb's whole content is never checked: nothing reads it to the end.
_UNCHECKED = 0


def content_types_bomb(inflated: int = 1 << 30) -> bytes:
    """A DOCX whose [Content_Types].xml inflates to `inflated` bytes: the main part's type, then
    spaces. Reading that member whole took the API from 137 MB to 1.95 GB."""
    head = WORD_CONTENT_TYPES[:-8]  # open: the spaces follow inside <Types>
    deflater = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = deflater.compress(head) + deflater.flush(zlib.Z_SYNC_FLUSH)
    spaces = deflated_spaces(inflated)
    return zip_of(
        [
            ("[Content_Types].xml", first + spaces, len(head) + inflated, _UNCHECKED),
            _member("word/document.xml", b"<w:document/>"),
        ]
    )


def document_bomb(inflated: int = 1 << 30) -> bytes:
    """A DOCX whose word/document.xml declares and inflates to `inflated` bytes."""
    return zip_of(
        [
            _member("[Content_Types].xml", WORD_CONTENT_TYPES),
            ("word/document.xml", deflated_spaces(inflated), inflated, _UNCHECKED),
        ]
    )


def lying_document(inflated: int = 64 << 20) -> bytes:
    """A DOCX (python-docx's blank one) whose word/document.xml declares 1 KiB but holds
    `inflated` bytes."""
    buffer = io.BytesIO()
    docx.Document().save(buffer)
    blank = zipfile.ZipFile(io.BytesIO(buffer.getvalue()))
    members = [
        _member(part.filename, blank.read(part))
        if part.filename != "word/document.xml"
        else (part.filename, deflated_spaces(inflated), 1024, zlib.crc32(b" " * 1024))
        for part in blank.infolist()
    ]
    return zip_of(members)


def paragraphs_docx(paragraphs: int, body: str = "") -> bytes:
    """A valid DOCX of `paragraphs` identical paragraphs of 37 characters, after `body` (raw
    WordprocessingML): 100,000 of them make a file of 60 KB, 8 MB inflated, 4 million
    characters."""
    document = docx.Document()
    buffer = io.BytesIO()
    document.save(buffer)
    source = zipfile.ZipFile(io.BytesIO(buffer.getvalue()))
    paragraph = b"<w:p><w:r><w:t>lorem ipsum dolor sit amet consectetur</w:t></w:r></w:p>"
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for member in source.infolist():
            data = source.read(member)
            if member.filename == "word/document.xml":
                content = body.encode() + paragraph * paragraphs
                data = data.replace(b"<w:body>", b"<w:body>" + content, 1)
            archive.writestr(member.filename, data)
    return out.getvalue()


def many_members_zip(members: int) -> bytes:
    """A ZIP of `members` empty members (a Word package's content types among them)."""
    entries = [_member("[Content_Types].xml", WORD_CONTENT_TYPES)]
    entries += [_member(f"word/media/{n}", b"") for n in range(members - 1)]
    return zip_of(entries)


def pdf_of_pages(pages: int) -> bytes:
    """A minimal PDF of `pages` pages, each saying "hello" (object by object, by hand: 100,000
    pages make 8 MB in a quarter of a second)."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids ["
        + b" ".join(b"%d 0 R" % (5 + n) for n in range(pages))
        + b"] /Count %d >>" % pages,
        b"<< /Length 40 >>\nstream\nBT /F1 12 Tf 20 100 Td (hello) Tj ET     \nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    page = (
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] /Contents 3 0 R "
        b"/Resources << /Font << /F1 4 0 R >> >> >>"
    )
    objects += [page] * pages
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n%s\nendobj\n" % (number, body))
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    out.write(b"".join(b"%010d 00000 n \n" % offset for offset in offsets))
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\n" % (len(objects) + 1))
    out.write(b"startxref\n%d\n%%%%EOF\n" % xref)
    return out.getvalue()


def nested_html(depth: int, tag: str = "div") -> bytes:
    """`depth` nested elements, each with a word: lexbor's parse is quadratic in the depth."""
    return (f"<html><body>{f'<{tag}>x' * depth}{f'</{tag}>' * depth}</body></html>").encode()


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_declaring(width: int, height: int) -> bytes:
    """A grey PNG whose header declares `width` by `height` pixels, with a few KB of data: its
    first rows of zeros (100,000 by 100,000 would decode to 10 GB)."""
    rows = zlib.compress((b"\0" * (1 + width)) * 16, 9)
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", rows)
        + _png_chunk(b"IEND", b"")
    )


def tiff_of_pages(pages: int, width: int = 1, height: int = 1) -> bytes:
    """A little-endian TIFF of `pages` grey pages of `width` by `height`, every one pointing at
    the same pixel data (100,000 pages make 10 MB)."""
    entries = (
        (256, 4, width),  # ImageWidth, LONG
        (257, 4, height),  # ImageLength
        (258, 3, 8),  # BitsPerSample, SHORT
        (259, 3, 1),  # Compression: none
        (262, 3, 1),  # PhotometricInterpretation: black is zero
        (273, 4, 8),  # StripOffsets: the byte after the header
        (278, 4, height),  # RowsPerStrip
        (279, 4, width * height),  # StripByteCounts (the data need not all be there)
    )
    directory_size = 2 + 12 * len(entries) + 4
    first = 16
    out = io.BytesIO()
    out.write(b"II*\x00" + struct.pack("<I", first) + b"\xff" * 8)
    for page in range(pages):
        following = first + (page + 1) * directory_size if page + 1 < pages else 0
        out.write(struct.pack("<H", len(entries)))
        for tag, kind, value in entries:
            out.write(struct.pack("<HHII", tag, kind, 1, value))
        out.write(struct.pack("<I", following))
    return out.getvalue()


def zip_members_marked(package: bytes, *, encrypted: bool = False, method: int = 0) -> bytes:
    """The package with every member flagged encrypted (a ZIP tool's password), or its
    compression method set to `method`, in its local and central headers alike."""
    data = bytearray(package)
    for signature, flags_at, method_at in ((b"PK\x01\x02", 8, 10), (b"PK\x03\x04", 6, 8)):
        at = data.find(signature)
        while at >= 0:
            if encrypted:
                struct.pack_into("<H", data, at + flags_at, data[at + flags_at] | 1)
            if method:
                struct.pack_into("<H", data, at + method_at, method)
            at = data.find(signature, at + 4)
    return bytes(data)
