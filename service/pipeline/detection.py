"""What a document is, judged from its content; the file name only breaks ties."""

from __future__ import annotations

import io
import re
import zipfile
import zlib
from pathlib import PurePath

import msgspec

from service.errors import CorruptFile, EmptyDocument, TooLarge, UnsupportedType
from service.pipeline.decoding import Decoded, decode
from service.pipeline.limits import NO_LIMITS, Limits
from service.pipeline.models import DocumentType
from service.pipeline.steps import step

_READABLE = (
    "docproc reads PDF, Word (DOCX), Excel (XLSX), PowerPoint (PPTX), OpenDocument (ODT, ODS, "
    "ODP), RTF, e-mail (EML), HTML, Markdown, plain text and images (PNG, JPEG, TIFF, WebP, BMP)"
)

_OLE = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_ENCRYPTED_PACKAGE = "EncryptedPackage".encode("utf-16-le")
"""The stream of an encrypted OOXML file, named in its container's directory."""
_IMAGE_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*")
_BMP_INFO_HEADER_SIZES = frozenset({12, 40, 52, 56, 64, 108, 124})
"""The sizes of the header after a BMP's file header, one per version of the format: "BM" alone
begins too much text to tell an image."""
_SIGNATURES = (
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"RIFF", "a RIFF media file (audio or video)"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"Rar!\x1a\x07", "a RAR archive"),
    (b"\xfd7zXZ\x00", "an xz archive"),
    (b"\x7fELF", "an executable"),
    (_OLE, "a legacy Office file (.doc, .xls or .ppt; save it as .docx, .xlsx or .pptx)"),
)
_RTF = b"{\\rtf"
_ZIP_SIGNATURES = (b"PK\x03\x04", b"PK\x05\x06")
_CENTRAL_DIRECTORY_ENTRY = b"PK\x01\x02"
_MAX_MEMBERS = 10_000
"""Members of a ZIP package read at most. Word writes a few dozen plus one per image; zipfile
costs about 8 µs and 600 bytes for each entry of the central directory, so 600,000 empty members
in a 50 MB upload would cost seconds and hundreds of megabytes before anything is inflated."""
_CONTENT_TYPES = "[Content_Types].xml"
_CONTENT_TYPES_PREFIX = 64 * 1024
"""Bytes of `[Content_Types].xml` inflated at most: the main part's type is declared within the
first few hundred; the rest of the prefix allows for long lists of overrides."""
_DEFLATE_MAX_RATIO = 1032
"""The most deflate can compress (a run of one byte); a member declaring more lies or is a bomb."""
_MAIN_PARTS: tuple[tuple[bytes, DocumentType], ...] = (
    (b"wordprocessingml.document.main+xml", "docx"),
    (b"spreadsheetml.sheet.main+xml", "xlsx"),
    (b"presentationml.presentation.main+xml", "pptx"),
)
"""The main part's content type in `[Content_Types].xml`, for each OOXML type read."""
_OTHER_PACKAGES = (
    ("word/", "a Word file that is not a .docx document (a template or macro-enabled file)"),
    ("xl/", "an Excel file that is not a .xlsx workbook (a template or macro-enabled file)"),
    (
        "ppt/",
        "a PowerPoint file that is not a .pptx presentation (a show, template or macro file)",
    ),
)
_ODF_MIMETYPE = "mimetype"
_ODF_TYPES: dict[bytes, DocumentType] = {
    b"application/vnd.oasis.opendocument.text": "odt",
    b"application/vnd.oasis.opendocument.spreadsheet": "ods",
    b"application/vnd.oasis.opendocument.presentation": "odp",
}
"""An OpenDocument package's type, from its `mimetype` member (written first, stored)."""
_PACKAGE_NAMES: dict[DocumentType, str] = {
    "docx": "DOCX",
    "xlsx": "XLSX",
    "pptx": "PPTX",
    "odt": "ODT",
    "ods": "ODS",
    "odp": "ODP",
}
_PACKAGE_SUFFIXES: dict[str, DocumentType] = {
    f".{name.lower()}": kind for kind, name in _PACKAGE_NAMES.items()
}
_PACKAGE_HINTS: tuple[tuple[bytes, DocumentType], ...] = (
    (b"word/", "docx"),
    (b"xl/", "xlsx"),
    (b"ppt/", "pptx"),
    *((b"mimetype" + mimetype, kind) for mimetype, kind in _ODF_TYPES.items()),
)
"""What the first bytes of a damaged package show of its type."""

_CLAIMED_BY_NAME = {".pdf": "PDF", ".docx": "Word document"}
_MARKDOWN_SUFFIXES = frozenset({".md", ".markdown", ".mdown", ".mkd"})
_HTML_SUFFIXES = frozenset({".html", ".htm", ".xhtml"})
_SAMPLE_CHARS = 65536
_MAIL_HEADER_BYTES = 65536
"""Bytes in which a message's header block must end: a long Received chain takes a few KB."""
_MAIL_FIELD = re.compile(r"([!-9;-~]{1,76}):")
_MAIL_START = re.compile(rb"(?:From [^\r\n]*\r?\n)?[!-9;-~]{1,76}:")
_MAIL_FIELDS = frozenset({
    "from", "to", "cc", "bcc", "subject", "date", "message-id", "mime-version", "received",
    "return-path", "reply-to", "sender", "delivered-to", "in-reply-to", "references",
    "content-type", "content-transfer-encoding", "dkim-signature", "x-mailer", "user-agent",
})  # fmt: skip

_HTML_DOCUMENT = re.compile(r"<!doctype\s+html|<html[\s>]|<head[\s>]|<body[\s>]", re.IGNORECASE)
_HTML_TAG = re.compile(
    r"</?(?:a|b|br|div|em|h[1-6]|i|img|li|ol|p|span|strong|table|td|tr|ul)[\s/>]", re.IGNORECASE
)


class _AtLineStart:
    """A pattern that must start a line, found where `^` under re.MULTILINE finds it: at the
    start of the text, then after each line break. A search for a line break and the pattern
    starts with a literal, which the regex engine skips to in C, where a MULTILINE `^` is tried
    at every character: 21 → 3 µs for the list pattern on 2 KB of prose."""

    def __init__(self, pattern: str) -> None:
        self._first = re.compile(pattern)
        self._after_a_break = re.compile("\n" + pattern)

    def search(self, text: str) -> bool:
        return self._first.match(text) is not None or self._after_a_break.search(text) is not None


# Bounded repetitions keep a long line full of "[" or "**" from costing a scan per character.
_MARKDOWN_STRONG: dict[str, re.Pattern[str] | _AtLineStart] = {
    "heading": _AtLineStart(r"#{1,6}[ \t]+\S"),
    "fence": _AtLineStart(r"(?:```|~~~)"),
    "link": re.compile(r"!?\[[^\]\n]{1,200}\]\([^)\s]{1,500}\)"),
    "table": _AtLineStart(r"\|?[ \t]*:?-{3,}:?[ \t]*\|"),
}
_MARKDOWN_WEAK: dict[str, re.Pattern[str] | _AtLineStart] = {
    "emphasis": re.compile(r"(\*\*|__)\S[^\n]{0,200}?\S\1"),
    "list": _AtLineStart(r"[ \t]*(?:[-*+]|\d{1,3}[.)])[ \t]+\S"),
    "quote": _AtLineStart(r">[ \t]?\S"),
    "code": re.compile(r"`[^`\n]+`"),
}

# What each pattern cannot match without, one of: "" for lists, whose ". " is in every sentence.
_MARKDOWN_NEEDS = {
    "heading": ("#",),
    "fence": ("```", "~~~"),
    "link": ("](",),
    "table": ("---",),
    "emphasis": ("**", "__"),
    "list": ("",),
    "quote": (">",),
    "code": ("`",),
}


class Identified(msgspec.Struct, frozen=True, kw_only=True):
    """A document's type and, for the text types, its decoded text."""

    detected_type: DocumentType
    decoded: Decoded | None = None


def detect_type(
    data: bytes, filename: str | None = None, limits: Limits = NO_LIMITS
) -> DocumentType:
    """The document's type, from its content first; raises UnsupportedType for other binaries,
    TooLarge for a DOCX beyond `limits.max_inflated_bytes` or a ZIP bomb."""
    return identify(data, filename, limits).detected_type


def identify(data: bytes, filename: str | None = None, limits: Limits = NO_LIMITS) -> Identified:
    """Detect the type, decoding text documents on the way so that extraction decodes once.

    A ZIP package is judged from its central directory and a bounded prefix of one member: nothing
    is inflated whole, and a DOCX declaring more than `limits.max_inflated_bytes` is TooLarge.
    """
    if not data:
        raise EmptyDocument("the document is empty (0 bytes)")
    if b"%PDF-" in data[:1024]:
        return Identified(detected_type="pdf")
    if data.startswith(_ZIP_SIGNATURES):
        return Identified(detected_type=_zip_type(data, filename, limits))
    if _is_image(data):
        return Identified(detected_type="image")
    if data.startswith(_OLE) and _ENCRYPTED_PACKAGE in data:
        raise UnsupportedType(
            "a password-protected Office file (Office encrypts a .docx, .xlsx or .pptx into a "
            "legacy container); upload it without the password"
        )
    for signature, kind in _SIGNATURES:
        if data.startswith(signature):
            raise UnsupportedType(f"{kind} is not a document; {_READABLE}")
    if data[:1024].lstrip().startswith(_RTF):
        return Identified(detected_type="rtf")
    suffix = _suffix(filename)
    if _is_mail(data, suffix):
        return Identified(detected_type="eml")
    try:
        with step("decode"):
            decoded = decode(data)
    except UnsupportedType as exc:
        if suffix in _CLAIMED_BY_NAME:
            raise CorruptFile(f"named {suffix} but not a valid {_CLAIMED_BY_NAME[suffix]}") from exc
        raise
    return Identified(detected_type=_text_type(decoded.text, suffix), decoded=decoded)


def _is_image(data: bytes) -> bool:
    """PNG, JPEG, TIFF, WebP or BMP, by its signature (a BMP's also by its header's size)."""
    if data.startswith(_IMAGE_SIGNATURES):
        return True
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return True
    return (
        data.startswith(b"BM")
        and data[6:10] == b"\0\0\0\0"  # the reserved fields
        and int.from_bytes(data[14:18], "little") in _BMP_INFO_HEADER_SIZES
    )


def _zip_type(data: bytes, filename: str | None, limits: Limits) -> DocumentType:
    """An office package's type (OOXML by its main part, OpenDocument by its `mimetype`), or a
    broken archive's that claims to be one; otherwise unsupported."""
    # A count of central directory signatures: at least the entries zipfile would parse.
    members = data.count(_CENTRAL_DIRECTORY_ENTRY)
    if members > _MAX_MEMBERS:
        raise TooLarge(
            f"a ZIP package of {members:,} members; docproc reads at most {_MAX_MEMBERS:,}"
        )
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            listed = archive.infolist()
            _check_declared_sizes(listed)
            _check_readable(listed)
            names = [member.filename for member in listed]
            content_types = mimetype = b""
            if _CONTENT_TYPES in names:
                with archive.open(_CONTENT_TYPES) as part:
                    content_types = part.read(_CONTENT_TYPES_PREFIX)
            if _ODF_MIMETYPE in names:
                with archive.open(_ODF_MIMETYPE) as part:
                    mimetype = part.read(256).strip()
    except (
        zipfile.BadZipFile,
        KeyError,
        OSError,
        EOFError,
        ValueError,
        zlib.error,
        RuntimeError,  # zipfile's "password required"
        NotImplementedError,  # zipfile's "compression method is not supported"
    ) as exc:
        claimed = _damaged_package_type(data, filename)
        if claimed is not None:
            return claimed  # reading it will say what is broken
        raise UnsupportedType(f"a damaged or unknown ZIP archive; {_READABLE}") from exc
    detected = _package_type(content_types, mimetype, names)
    if detected is None:
        for prefix, kind in _OTHER_PACKAGES:
            if any(name.startswith(prefix) for name in names):
                raise UnsupportedType(f"{kind} is not supported; {_READABLE}")
        if mimetype.startswith(b"application/vnd.oasis.opendocument."):
            shown = mimetype[:100].decode("ascii", "replace")
            raise UnsupportedType(
                f"an OpenDocument file of type {shown} is not supported; {_READABLE}"
            )
        raise UnsupportedType(f"a ZIP archive is not a document; {_READABLE}")
    limits.check(
        "max_inflated_bytes",
        sum(member.file_size for member in listed),
        f"the {_PACKAGE_NAMES[detected]}'s parts inflate to {{count:,}} bytes",
    )
    return detected


def _package_type(content_types: bytes, mimetype: bytes, names: list[str]) -> DocumentType | None:
    for main_part, kind in _MAIN_PARTS:
        if main_part in content_types:
            return kind
    if not content_types and "word/document.xml" in names:
        return "docx"
    return _ODF_TYPES.get(mimetype)


def _damaged_package_type(data: bytes, filename: str | None) -> DocumentType | None:
    """The type a ZIP that cannot be opened claims, by its name or its first bytes."""
    claimed = _PACKAGE_SUFFIXES.get(_suffix(filename))
    if claimed is not None:
        return claimed
    head = data[:65536]
    return next((kind for hint, kind in _PACKAGE_HINTS if hint in head), None)


def _check_declared_sizes(members: list[zipfile.ZipInfo]) -> None:
    """Refuse a member by the size its directory entry declares, before inflating any of it.

    The declarations bind: zipfile stops each member at its declared size (and fails its CRC
    check when more was there), so what a reader inflates later is bounded by their sum,
    which the caller checks against the limit.
    """
    for member in members:
        if member.file_size > _DEFLATE_MAX_RATIO * max(member.compress_size, 1) + 65536:
            raise TooLarge(
                f"the ZIP member {member.filename[:100]!r} declares {member.file_size:,} bytes "
                f"from {member.compress_size:,} compressed, more than compression can reach "
                "(a ZIP bomb)"
            )


_PACKAGE_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)


def _check_readable(members: list[zipfile.ZipInfo]) -> None:
    """Refuse a package no reader can open: a member encrypted (a ZIP tool's password; an
    office program's own protection makes no ZIP), or compressed by a method office writers do
    not use (zipfile knows no WinZip AES, 99) — an upload answered 500 for either."""
    for member in members:
        if member.flag_bits & 0x1:
            raise UnsupportedType(
                f"an encrypted ZIP package (its member {member.filename[:100]!r} needs a "
                f"password): save the document without one; {_READABLE}"
            )
        if member.compress_type not in _PACKAGE_METHODS:
            raise UnsupportedType(
                f"a ZIP package whose member {member.filename[:100]!r} is compressed with "
                f"method {member.compress_type}, which office writers do not use; {_READABLE}"
            )


def _is_mail(data: bytes, suffix: str) -> bool:
    """Whether the document opens with a block of RFC 5322 header fields that a message has.

    Every line up to the first blank one must be a field or a field's continuation, and among
    the fields must be From and two more that mail carries (To, Subject, Date...): a note that
    begins "Title: ..." or Markdown with front matter is not mail. Named .eml, one mail field
    is enough.
    """
    if _MAIL_START.match(data) is None:
        return False  # most text: its first line is no header field
    head = data[:_MAIL_HEADER_BYTES].decode("latin-1")
    lines = head.splitlines()
    if lines and lines[0].startswith("From "):
        lines = lines[1:]  # an mbox separator, which some clients keep when saving one message
    names: set[str] = set()
    ended = len(data) <= _MAIL_HEADER_BYTES
    for line in lines:
        if not line:
            ended = True
            break
        if line[0] in " \t" and names:
            continue
        field = _MAIL_FIELD.match(line)
        if field is None:
            return False
        names.add(field.group(1).lower())
    mail = names & _MAIL_FIELDS
    if not ended or not mail:
        return False
    return suffix == ".eml" or ("from" in mail and len(mail) >= 3)


def _text_type(text: str, suffix: str) -> DocumentType:
    sample = text[:_SAMPLE_CHARS]
    if _HTML_DOCUMENT.search(sample, 0, 4096):
        return "html"
    tags = len(_HTML_TAG.findall(sample, 0, 4096))
    if (tags and suffix in _HTML_SUFFIXES) or (tags >= 3 and sample.lstrip().startswith("<")):
        return "html"
    if _markdown_score(sample) >= 3 or suffix in _MARKDOWN_SUFFIXES:
        return "markdown"
    return "text"


def _markdown_score(sample: str) -> int:
    """Two points for each kind of unmistakable Markdown syntax, one for each ambiguous kind.

    A pattern is tried only when the characters it cannot match without are in the sample: a
    `str` search runs at C speed, a regex tries every position (~10 µs a pattern on 2 kB), and
    plain text, the common case, has none of them.
    """
    strong = sum(
        1
        for name, pattern in _MARKDOWN_STRONG.items()
        if _has_any(sample, _MARKDOWN_NEEDS[name]) and pattern.search(sample)
    )
    weak = sum(
        1
        for name, pattern in _MARKDOWN_WEAK.items()
        if _has_any(sample, _MARKDOWN_NEEDS[name]) and pattern.search(sample)
    )
    return 2 * strong + weak


def _has_any(text: str, needles: tuple[str, ...]) -> bool:
    return any(needle in text for needle in needles)


def _suffix(filename: str | None) -> str:
    return PurePath(filename).suffix.lower() if filename else ""
