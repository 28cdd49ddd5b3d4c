"""How the console's templates show times, sizes, durations, bytes and structures."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

import msgspec
from markupsafe import Markup


def when(moment: datetime | None) -> Markup:
    """A time in UTC, which the page's script shows in the browser's zone (the ISO time on
    hover)."""
    if moment is None:
        return Markup("—")
    iso = moment.isoformat(timespec="milliseconds")
    return Markup('<time datetime="{0}" title="{0}">{1}</time>').format(
        iso, moment.strftime("%Y-%m-%d %H:%M:%S UTC")
    )


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def between(start: datetime | None, end: datetime | None) -> str:
    return "—" if start is None or end is None else duration((end - start).total_seconds())


def size(count: int | None) -> str:
    if count is None:
        return "—"
    value = float(count)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{count} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} bytes"


def pretty(value: Any) -> str:
    return json.dumps(msgspec.to_builtins(value), indent=2, ensure_ascii=False, default=str)


def hexdump(data: bytes, width: int = 16) -> str:
    """Offset, hex and printable ASCII, `width` bytes a line (for bodies that are not text)."""
    lines = []
    for offset in range(0, len(data), width):
        row = data[offset : offset + width]
        shown = "".join(chr(byte) if 32 <= byte < 127 else "." for byte in row)
        lines.append(f"{offset:08x}  {row.hex(' '):<{width * 3}} {shown}")
    return "\n".join(lines)


def query(values: dict[str, Any], **changes: Any) -> str:
    """A query string of `values` with `changes`, leaving out what is empty."""
    merged = {**values, **changes}
    return urlencode(
        {
            name: value.isoformat() if isinstance(value, datetime) else value
            for name, value in merged.items()
            if value not in (None, "")
        }
    )


def fields(struct: Any) -> dict[str, Any]:
    return msgspec.structs.asdict(struct)


FILTERS = {
    "when": when,
    "duration": duration,
    "between": between,
    "size": size,
    "pretty": pretty,
    "hexdump": hexdump,
    "query": query,
    "fields": fields,
}
