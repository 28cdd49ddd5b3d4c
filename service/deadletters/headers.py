"""AMQP header tables as JSON and back, without losing their types.

Headers carry datetimes (x-death times), bytes and decimals that JSON has no word for; they are
stored tagged (`{"$datetime": ...}`) so that a re-published message carries what it came with.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

JsonValue = Any


def to_json(value: Any) -> JsonValue:
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        return {"$datetime": aware.isoformat()}
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, Decimal):
        return {"$decimal": str(value)}
    return value


def from_json(value: JsonValue) -> Any:
    if isinstance(value, dict):
        if len(value) == 1:
            ((tag, inner),) = value.items()
            if tag == "$datetime":
                return datetime.fromisoformat(inner)
            if tag == "$bytes":
                return base64.b64decode(inner)
            if tag == "$decimal":
                return Decimal(inner)
        return {k: from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return value


def plain(value: JsonValue) -> Any:
    """The tagged form made readable (for the API): datetimes as ISO text, bytes as base64 text."""
    if isinstance(value, dict):
        if len(value) == 1:
            ((tag, inner),) = value.items()
            if tag in ("$datetime", "$bytes", "$decimal"):
                return inner
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value
