"""What RabbitMQ passes on of a message and Python's AMQP readers refuse, as raw bytes: properties
(a header table nested deeper than py-amqp's and pamqp's recursion reaches, a timestamp past the
year 9999, a content type that is not UTF-8) and routing keys that are not UTF-8.
`RawProperties` publishes such properties through aiormq as written, `raw_short_strings` such
routing keys."""

from __future__ import annotations

import struct
from typing import Any

import pamqp.encode
import pytest
from pamqp.commands import Basic

CONTENT_TYPE = 1 << 15
HEADERS = 1 << 13


def _short(text: bytes) -> bytes:
    return bytes([len(text)]) + text


def _headers(name: bytes, value: bytes) -> bytes:
    """The properties of a message with one header, `value` a field value as written."""
    table = _short(name) + value
    return struct.pack(">H", HEADERS) + struct.pack(">I", len(table)) + table


def deep_headers(depth: int) -> bytes:
    """The properties of a message whose one header is a table `depth` tables deep."""
    value = b"S" + struct.pack(">I", 1) + b"x"
    for _ in range(depth):
        entry = _short(b"k") + value
        value = b"F" + struct.pack(">I", len(entry)) + entry
    return _headers(b"x-nested", value)


HOSTILE = {
    "nested 3,000 deep": deep_headers(3000),
    "a timestamp past 9999": _headers(b"x-when", b"T" + struct.pack(">Q", 2**64 - 1)),
    "a content type not UTF-8": struct.pack(">H", CONTENT_TYPE) + _short(b"\xff\xfe\xfd"),
}
"""Properties (flags, then values), by what is wrong with them."""


def content_header(properties: bytes, body_size: int) -> bytes:
    """A Basic content-header frame's payload: class, weight, body size, then `properties`."""
    return struct.pack(">HHQ", Basic.frame_id, 0, body_size) + properties


class RawProperties(Basic.Properties):
    """Properties that marshal to the bytes given, whatever they hold."""

    def __init__(self, raw: bytes) -> None:
        super().__init__()
        self.raw = raw

    def marshal(self) -> bytes:
        return self.raw


NOT_UTF8 = b"\xff\xfe"
"""The start of a routing key that is not UTF-8."""


def raw_short_strings(monkeypatch: pytest.MonkeyPatch) -> None:
    """pamqp writes a short string given as bytes as those bytes, for the rest of the test."""
    strict: Any = pamqp.encode._string

    def raw(encoder: struct.Struct, value: Any) -> bytes:
        if isinstance(value, bytes):
            return encoder.pack(len(value)) + value
        encoded: bytes = strict(encoder, value)
        return encoded

    monkeypatch.setattr(pamqp.encode, "_string", raw)


def deliver_arguments(routing_key: bytes, exchange: bytes = b"docproc") -> bytes:
    """basic.deliver's arguments as RabbitMQ writes them: consumer tag, delivery tag,
    redelivered, exchange, routing key."""
    return _short(b"ctag") + struct.pack(">QB", 7, 1) + _short(exchange) + _short(routing_key)
