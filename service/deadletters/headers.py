"""AMQP header tables as JSON and back, without losing their types.

Headers carry datetimes (x-death times), bytes and decimals that JSON has no word for; they are
stored tagged (`{"$datetime": ...}`) so that a re-published message carries what it came with. A
table that only looks like a tag is stored as `{"$table": ...}`, and a tag that does not decode
(a forged letter) is kept as it is: reading a stored letter never fails.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, NamedTuple

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


class _Open(NamedTuple):
    """A container being rebuilt: `made` takes its place in its parent (the container, or a
    wrapper of it), `into` receives its children as each is rebuilt, `children` are the
    (key or index, value) pairs still to visit."""

    made: Any
    into: Any
    children: Iterator[tuple[Any, Any]]


def _table(value: dict[str, Any]) -> _Open:
    into: dict[str, Any] = {}
    return _Open(into, into, iter(value.items()))


def _array(value: list[Any]) -> _Open:
    into: list[Any] = [None] * len(value)
    return _Open(into, into, enumerate(value))


def _rebuilt(value: Any, visit: Callable[[Any], Any]) -> Any:
    """`value` rebuilt at any depth without recursion: `visit` gives a node's new value, or an
    `_Open` container whose children are visited in turn. Recursing, a table nested some 480
    deep (RabbitMQ and the store take them) ran out of Python's stack in the API: a 500."""
    top: list[Any] = [None]
    stack: list[tuple[Any, Iterator[tuple[Any, Any]]]] = [(top, iter([(0, value)]))]
    while stack:
        into, children = stack[-1]
        for key, child in children:
            made = child if type(child) in _AS_IS else visit(child)
            if type(made) is _Open:
                into[key] = made.made
                stack.append((made.into, made.children))
                break
            into[key] = made
        else:
            stack.pop()
    return top[0]


def _from_json(value: JsonValue) -> Any:
    if isinstance(value, dict):
        if len(value) == 1:
            ((tag, inner),) = value.items()
            if tag == "$table" and isinstance(inner, dict):
                return _table(inner)
            if tag in _DECODERS:
                try:
                    return _DECODERS[tag](inner)
                except (TypeError, ValueError, ArithmeticError):
                    return value  # not what the tag says: kept as stored
        return _table(value)
    if isinstance(value, list):
        return _array(value)
    return value


def from_json(value: JsonValue) -> Any:
    """The stored form as the header table it was."""
    return _rebuilt(value, _from_json)


def _plain(value: JsonValue) -> Any:
    if isinstance(value, dict):
        if len(value) == 1:
            ((tag, inner),) = value.items()
            if tag == "$table" and isinstance(inner, dict):
                return _table(inner)
            if tag in _TAGS:
                return inner
        return _table(value)
    if isinstance(value, list):
        return _array(value)
    return value


def plain(value: JsonValue) -> Any:
    """The tagged form made readable (for the API): datetimes as ISO text, bytes as base64 text."""
    return _rebuilt(value, _plain)
