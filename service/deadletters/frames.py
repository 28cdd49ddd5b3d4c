"""A dead message whose properties cannot be read is stored all the same (the DLQ consumer's).

RabbitMQ passes a message's properties on as its publisher wrote them, and pamqp, which reads
them for aiormq, refuses some a publisher can write: a timestamp past the year 9999, a short
string that is not UTF-8 (a content type, a header's name), a table nested some 490 deep
(Python's recursion limit). pamqp's error ended aiormq's connection, the message went back to
the head of the queue, and the consumer met it again at once: nothing behind it was stored
again, and the consumer reconnected as fast as it could (19,189 times in 150 s).

`install()` makes such a content header readable: its body size (which says how much body
follows) is read as always, and its properties become one header, UNREADABLE_PROPERTIES,
holding pamqp's error and the properties' raw bytes — stored with the letter, as everything of
a dead message is. The hook is pamqp's reader of content-header frames, a private name of the
locked version: tests/integration/test_dead_letter_store.py fails if it moves.

A delivery's routing key and exchange name come from its publisher too, and one that is not UTF-8
(anything goes to `docproc.dlx`, bound with `#`) ended the connection the same way, from pamqp's
reader of method frames. Such a frame is read again with what is not UTF-8 replaced (U+FFFD): the
routing key is a fallback for the queue a letter died in, never how it is re-published.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import pamqp.decode
import pamqp.frame
from loguru import logger
from pamqp.base import Frame
from pamqp.commands import Basic
from pamqp.common import FieldTable
from pamqp.exceptions import UnmarshalingException
from pamqp.header import ContentHeader

from service.hooks import replace_once
from service.task_protocol import UNREADABLE_PROPERTIES

_FIXED = struct.Struct(">HHQ")
"""A content header's class, weight and body size: fixed, before the properties."""
_ERROR_CHARS = 1000


def install() -> None:
    """Read every content header and method frame of this process tolerantly (idempotent)."""
    replace_once(pamqp.frame, "_unmarshal_header_frame", _tolerant_header)
    replace_once(pamqp.frame, "_unmarshal_method_frame", _tolerant_method)


def _tolerant_header(
    original: Callable[[bytes], ContentHeader],
) -> Callable[[bytes], ContentHeader]:
    def unmarshal(frame_data: bytes) -> ContentHeader:
        try:
            return original(frame_data)
        except Exception as exc:  # ValueError, OverflowError, RecursionError: whatever it is
            if len(frame_data) < _FIXED.size:
                raise  # not even a body size: the frame is broken, not the message
            _, weight, body_size = _FIXED.unpack_from(frame_data)
            error = f"{type(exc).__name__}: {exc}"[:_ERROR_CHARS]
            logger.warning("a message's properties cannot be read ({}); kept as bytes", error)
            unreadable: FieldTable = {
                "error": error,
                "properties": bytes(frame_data[_FIXED.size :]),
            }
            properties = Basic.Properties(headers={UNREADABLE_PROPERTIES: unreadable})
            return ContentHeader(weight, body_size, properties)

    return unmarshal


def _lenient_short_str(value: bytes) -> tuple[int, str]:
    return value[0] + 1, bytes(value[1 : value[0] + 1]).decode("utf-8", "replace")


def _tolerant_method(original: Callable[[bytes], Frame]) -> Callable[[bytes], Frame]:
    def unmarshal(frame_data: bytes) -> Frame:
        try:
            return original(frame_data)
        except UnmarshalingException as exc:
            if not isinstance(exc.__cause__, UnicodeDecodeError):
                raise
            logger.warning("a delivery's routing key or exchange is not UTF-8; read leniently")
            # pamqp reads each argument through this table; the loop's one thread is in here.
            strict = pamqp.decode.METHODS["shortstr"]
            pamqp.decode.METHODS["shortstr"] = _lenient_short_str
            try:
                return original(frame_data)
            finally:
                pamqp.decode.METHODS["shortstr"] = strict

    return unmarshal
