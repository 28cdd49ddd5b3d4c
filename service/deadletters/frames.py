"""A dead message whose properties cannot be read is stored all the same (the DLQ consumer's).

RabbitMQ passes a message's properties on as its publisher wrote them, and pamqp, which reads
them for aiormq, refuses some a publisher can write: a timestamp past the year 9999, a short
string that is not UTF-8 (a content type, a header's name), a table nested some 490 deep
(Python's recursion limit). pamqp's error ended aiormq's connection, the message went back to
the head of the queue, and the consumer met it again at once: nothing behind it was stored
again, and the consumer reconnected as fast as it could (19,189 times in 150 s).

`install()` makes such a content header readable: its body size (which says how much body
follows) is read as always, and its properties become one header, UNREADABLE, holding pamqp's
error and the properties' raw bytes — stored with the letter, as everything of a dead message
is. The hook is pamqp's reader of content-header frames, a private name of the locked version:
tests/integration/test_dead_letter_store.py fails if it moves.
"""

from __future__ import annotations

import struct
from typing import Any

import pamqp.frame
from loguru import logger
from pamqp.commands import Basic
from pamqp.common import FieldTable
from pamqp.header import ContentHeader

from service.task_protocol import UNREADABLE_PROPERTIES

UNREADABLE = UNREADABLE_PROPERTIES
"""The header an unreadable message's properties are replaced by: `error`, `properties`."""
_FIXED = struct.Struct(">HHQ")
"""A content header's class, weight and body size: fixed, before the properties."""
_ERROR_CHARS = 1000


def install() -> None:
    """Read every content header of this process tolerantly (idempotent)."""
    original: Any = pamqp.frame._unmarshal_header_frame
    if getattr(original, "tolerant", False):
        return

    def tolerant(frame_data: bytes) -> ContentHeader:
        try:
            header: ContentHeader = original(frame_data)
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
            properties = Basic.Properties(headers={UNREADABLE: unreadable})
            return ContentHeader(weight, body_size, properties)
        return header

    tolerant.tolerant = True  # type: ignore[attr-defined]
    pamqp.frame._unmarshal_header_frame = tolerant
