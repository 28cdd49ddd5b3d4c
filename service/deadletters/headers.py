"""AMQP header tables as JSON and back, without losing their types.

Headers carry datetimes (x-death times), bytes and decimals that JSON has no word for; they are
stored tagged (`{"$datetime": ...}`) so that a re-published message carries what it came with. A
table that only looks like a tag is stored as `{"$table": ...}`, and a tag that does not decode
(a forged letter) is kept as it is: reading a stored letter never fails.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

JsonValue = Any


_TAGS = ("$datetime", "$bytes", "$decimal", "$table")


_AS_IS = frozenset({str, int, float, bool, type(None)})
"""Types JSON holds as they are: most header values, passed over without a call (the DLQ consumer
converts every header of every letter, twice per letter before this; a redrive converts every
letter's headers and properties back)."""


def to_json(value: Any) -> JsonValue:
    kind = type(value)
    if kind in _AS_IS:
        return value
    if kind is dict or isinstance(value, dict):
        table = {
            k if type(k) is str else str(k): v if type(v) in _AS_IS else to_json(v)
            for k, v in value.items()
        }
        return {"$table": table} if len(table) == 1 and next(iter(table)) in _TAGS else table
    if isinstance(value, list | tuple):
        return [v if type(v) in _AS_IS else to_json(v) for v in value]
    return _tagged(value)


def _tagged(value: Any) -> JsonValue:
    """A value JSON has no word for, tagged; anything else as it is."""
    if isinstance(value, datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        return {"$datetime": aware.isoformat()}
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, Decimal):
        return {"$decimal": str(value)}
    return value


_DECODERS: dict[str, Any] = {
    "$datetime": datetime.fromisoformat,
    # A bytearray: what pamqp writes as a byte array (bytes it refuses), so it goes out again.
    "$bytes": lambda text: bytearray(base64.b64decode(text, validate=True)),
    "$decimal": Decimal,
}


def from_json(value: JsonValue) -> Any:
    if isinstance(value, dict):
        if len(value) == 1:
            ((tag, inner),) = value.items()
            if tag == "$table" and isinstance(inner, dict):
                return {k: v if type(v) in _AS_IS else from_json(v) for k, v in inner.items()}
            if tag in _DECODERS:
                try:
                    return _DECODERS[tag](inner)
                except (TypeError, ValueError, ArithmeticError):
                    return value  # not what the tag says: kept as stored
        return {k: v if type(v) in _AS_IS else from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [v if type(v) in _AS_IS else from_json(v) for v in value]
    return value


def plain(value: JsonValue) -> Any:
    """The tagged form made readable (for the API): datetimes as ISO text, bytes as base64 text."""
    if isinstance(value, dict):
        if len(value) == 1:
            ((tag, inner),) = value.items()
            if tag == "$table" and isinstance(inner, dict):
                return {k: plain(v) for k, v in inner.items()}
            if tag in _TAGS:
                return inner
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value
