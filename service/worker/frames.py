"""What py-amqp cannot read of a delivery is dead-lettered or read leniently, not a crash (the
worker's).

RabbitMQ passes a message's properties on as its publisher wrote them, and py-amqp, which reads
them for Celery, refuses some a publisher can write: a header table nested some 970 deep (its
reader recurses until Python's limit), a timestamp past the year 9999, a short string that is
not UTF-8. Its error escaped Celery's event loop as "Unrecoverable error": the worker exited,
the message went back to its queue with every other message the worker had prefetched, and the
next worker met it again. A quorum queue dead-lettered it after DOCPROC_DELIVERY_LIMIT crashes —
counting those crashes against the innocent messages returned with it — and a classic queue,
which has no limit, stopped processing for good.

`install()` makes such a content header readable: its properties become one header,
UNREADABLE_PROPERTIES, holding py-amqp's error. `service.task_protocol.problem` names it, and the
worker's consumer rejects the message without requeue, as any other that cannot be a task
request: RabbitMQ dead-letters the original, properties intact, and the DLQ consumer stores it.
The hook is py-amqp's loader of content-header properties, a private name of the locked version:
tests/unit/test_worker_frames.py fails if it moves.

A delivery's routing key and exchange name come from its publisher too: a routing key that is not
UTF-8 (`\xff.document_processing` matches the work queue's binding `#.document_processing`)
stopped the worker the same way, from py-amqp's reader of method arguments. They are read again
with what is not UTF-8 replaced (U+FFFD): routing is done by then, and the task is the message's
body and headers, so it runs as any other.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import amqp.abstract_channel
from amqp.serialization import GenericContent
from loguru import logger

from service.hooks import replace_once
from service.task_protocol import UNREADABLE_PROPERTIES
from service.worker import bodies

_ERROR_CHARS = 1000
_FIXED = {
    "o": struct.Struct(">B"),
    "B": struct.Struct(">H"),
    "l": struct.Struct(">I"),
    "L": struct.Struct(">Q"),
}
"""py-amqp's codes of the fixed-size arguments: octet, short, long, long long."""


def install() -> None:
    """Read every content header and method of this process tolerantly, and its bodies within
    bounds (service.worker.bodies); idempotent."""
    replace_once(GenericContent, "_load_properties", _tolerant_properties)
    replace_once(amqp.abstract_channel, "loads", _tolerant_arguments)
    bodies.install()


def lenient_arguments(codes: str, buf: bytes, offset: int) -> tuple[list[Any], int]:
    """A method's arguments as py-amqp's `loads` reads them, short strings decoded with what is
    not UTF-8 replaced. The arguments a broker sends with a delivery (basic.deliver, get-ok,
    return) use these codes only: others are refused (ValueError)."""
    values: list[Any] = []
    bits = bitcount = 0
    for code in codes:
        if code == "b":  # bits share a byte, lowest first
            if not bitcount:
                bits, bitcount = buf[offset], 8
                offset += 1
            values.append(bool(bits & 1))
            bits, bitcount = bits >> 1, bitcount - 1
            continue
        bitcount = 0
        if code == "s":
            size = buf[offset]
            values.append(bytes(buf[offset + 1 : offset + 1 + size]).decode("utf-8", "replace"))
            offset += 1 + size
        elif code in _FIXED:
            values.append(_FIXED[code].unpack_from(buf, offset)[0])
            offset += _FIXED[code].size
        else:
            raise ValueError(f"no lenient reading of argument code {code!r}")
    return values, offset


def _tolerant_arguments(original: Callable[..., tuple[Any, ...]]) -> Callable[..., tuple[Any, ...]]:
    def loads(format: str, buf: bytes, offset: int) -> tuple[Any, ...]:
        try:
            return original(format, buf, offset)
        except UnicodeDecodeError as exc:
            logger.warning(
                "a delivery's routing key or exchange is not UTF-8 ({}); read leniently", exc
            )
            return lenient_arguments(format, buf, offset)

    return loads


def _tolerant_properties(original: Callable[..., int]) -> Callable[..., int]:
    def load(content: GenericContent, class_id: int, buf: bytes, offset: int) -> int:
        try:
            return original(content, class_id, buf, offset)
        except Exception as exc:  # RecursionError, ValueError, UnicodeDecodeError: whatever it is
            error = f"{type(exc).__name__}: {exc}"[:_ERROR_CHARS]
            logger.warning("a message's properties cannot be read ({}); dead-lettering it", error)
            content.properties = {"application_headers": {UNREADABLE_PROPERTIES: {"error": error}}}
            return len(buf)  # the properties end the frame

    return load
