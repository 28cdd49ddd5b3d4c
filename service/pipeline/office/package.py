"""What every office package shares: its ZIP checked part by part, safe XML, relationships
between parts, core properties.

Detection has refused a package whose parts declare more than `max_inflated_bytes` or more than
deflate can reach; what is left to check is a part that inflates past what it declares.
"""

from __future__ import annotations

import io
import posixpath
import struct
import zipfile
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import IO

from lxml import etree

from service.errors import CorruptFile
from service.pipeline.models import RawDocument

_LOCAL_HEADER = struct.Struct("<4s5HIIIHH")
_INFLATE_STEP = 4096
"""Compressed bytes inflated at a time when checking a part: at most 4 MB come out of them."""
_PROPERTIES_BYTES = 1 << 20
"""Bytes of a properties part read at most: a title, an author and two dates."""

_CORE = "docProps/core.xml"
_DC = "{http://purl.org/dc/elements/1.1/}"
_DCTERMS = "{http://purl.org/dc/terms/}"


def check_inflation(data: bytes, what: str) -> None:
    """CorruptFile when a part inflates to more than its declared size, found a few kilobytes at
    a time. zipfile cuts what it returns at the declared size, but a library reading a part
    whole makes zipfile inflate all of it before cutting: a part declaring 1 KiB could still
    take a gigabyte on the way. (Parts streamed through `zipfile.ZipFile.open` need no check:
    zipfile inflates them a buffer at a time and stops at the declared size.)"""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
        for member in members:
            _check_member(data, member, what)
    except (zipfile.BadZipFile, struct.error, zlib.error, ValueError) as exc:
        raise CorruptFile(f"not a valid {what}: {exc}") from exc


def _check_member(data: bytes, member: zipfile.ZipInfo, what: str) -> None:
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
            f"{member.compress_type}; office writers use only stored and deflated parts"
        )
    if produced > member.file_size:
        raise CorruptFile(
            f"the part {member.filename[:100]!r} inflates to more than the {member.file_size:,} "
            "bytes it declares"
        )


def open_package(data: bytes, what: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise CorruptFile(f"not a valid {what}: {exc}") from exc


def elements(
    source: IO[bytes], tags: tuple[str, ...] | None = None, *, starts: bool = True
) -> Iterator[tuple[str, etree._Element]]:
    """(event, element) for the start (unless `starts` is False) and end of each element of
    `tags` (by default all), parsed as it streams in. Fewer events cost less: each is a call
    into Python, the better part of reading a cell.

    No entity is expanded, no DTD loaded, nothing fetched, and libxml2's own bounds on depth and
    text size stay on (no `huge_tree`). The caller clears what it has read (`release`).
    """
    parsed: Iterator[tuple[str, etree._Element]] = etree.iterparse(
        source,
        events=("start", "end") if starts else ("end",),
        tag=tags,
        resolve_entities=False,
        load_dtd=False,
        no_network=True,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
    )
    return parsed


def release(element: etree._Element) -> None:
    """Free an element that has been read, and the siblings read before it, which lxml keeps
    under their parent until the end of the document."""
    element.clear(keep_tail=True)  # type: ignore[call-arg]  # lxml-stubs lag lxml 4.4
    parent = element.getparent()
    if parent is not None:
        while element.getprevious() is not None:
            del parent[0]


def parse_part(
    archive: zipfile.ZipFile, name: str, limit: int = _PROPERTIES_BYTES
) -> etree._Element | None:
    """A small part (properties, a workbook's list of sheets) parsed whole, None when absent;
    CorruptFile when it holds more than `limit` bytes."""
    try:
        with archive.open(name) as part:
            content = part.read(limit + 1)
    except KeyError:
        return None
    if len(content) > limit:
        raise CorruptFile(f"the part {name!r} holds more than {limit:,} bytes")
    parser = etree.XMLParser(
        resolve_entities=False, load_dtd=False, no_network=True, huge_tree=False
    )
    try:
        return etree.fromstring(content, parser)
    except etree.XMLSyntaxError as exc:
        raise CorruptFile(f"the part {name!r} is not well-formed XML: {exc}") from exc


def relationships(archive: zipfile.ZipFile, source: str) -> Iterator[tuple[str, str]]:
    """(type, target part) of each internal relationship of the part `source` ("": the package)."""
    for _, (kind, target) in relationship_ids(archive, source):
        yield kind, target


def relationship_ids(
    archive: zipfile.ZipFile, source: str
) -> Iterator[tuple[str, tuple[str, str]]]:
    folder, name = posixpath.split(source)
    rels = parse_part(archive, posixpath.join(folder, "_rels", f"{name}.rels"))
    if rels is None:
        return
    for relationship in rels.iter("{*}Relationship"):
        target = relationship.get("Target") or ""
        if relationship.get("TargetMode") == "External":
            continue
        # Targets are relative to the source's folder, or absolute from the package's root.
        path = target.lstrip("/") if target.startswith("/") else posixpath.join(folder, target)
        yield (
            relationship.get("Id") or "",
            (relationship.get("Type") or "", posixpath.normpath(path)),
        )


def with_core_properties(
    archive: zipfile.ZipFile, text: str, page_count: int | None
) -> RawDocument:
    """`text` with the title, author and times of an OOXML package's docProps/core.xml."""
    core = parse_part(archive, _CORE)
    if core is None:
        return RawDocument(text=text, page_count=page_count)
    return RawDocument(
        text=text,
        page_count=page_count,
        title=core.findtext(f"{_DC}title") or None,
        author=core.findtext(f"{_DC}creator") or None,
        created=timestamp(core.findtext(f"{_DCTERMS}created")),
        modified=timestamp(core.findtext(f"{_DCTERMS}modified")),
    )


def timestamp(value: str | None) -> datetime | None:
    """An ISO 8601 time as office files write it, in UTC when it names no zone; None when it is
    absent or cannot be read (a bad date costs the date, not the document)."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return aware(parsed)


def aware(moment: datetime | None) -> datetime | None:
    """A time that says its zone: one that does not is taken as UTC, as OOXML and ODF mean."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)
