"""What kombu would inflate or decode of a delivery's body in the worker is bounded first.

kombu inflates a body whose `compression` header names a method as it builds the message, in the
worker's main process, before docproc sees it, and without a bound: 2.6 KB of bzip2 took the
main process and a pool process from 111 MB to 1.1 GB and the event loop for 9 s (a 64 KiB
message: some 13 GiB). And when Celery reads a body whose content type has no decoder of its
own (`application/data`), kombu decodes it with whatever codec its `content_encoding` names —
`bz2_codec` and `zlib_codec` inflate too.

`install()` makes kombu inflate through `service.task_protocol.inflated`, which stops past
BODY_CHECK_LIMIT (what the worker checks of a body before Celery reads it; a docproc task's body
is a few hundred bytes), and refuses a content encoding other than ENCODINGS as the message is
built. Either refusal is an error of the message, which kombu hands to the consumer's
`on_decode_error`: the worker rejects it without requeue, and RabbitMQ dead-letters it as it
came. The message keeps its body as it arrived (`arrived()`), which the worker hands back to the
delay queues under its `compression` header. The hooks are kombu's name of the decompressor its
messages use and its AMQP channel's `message_to_python`, names of the locked version:
tests/unit/test_worker_bodies.py fails if they move.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import kombu.message
from kombu.exceptions import DecodeError
from kombu.transport import pyamqp

from service.hooks import replace_once
from service.task_protocol import BODY_CHECK_LIMIT, COMPRESSIONS, inflated, shown

ENCODINGS = frozenset({"utf-8", "utf8", "binary", "ascii-8bit"})
"""The content encodings a message may name (any case; none means UTF-8): what kombu writes (UTF-8
for JSON and docproc's serializer, `binary` for raw bytes) and what it reads as bytes."""

_ARRIVED = "docproc_arrived_body"


class UnreadableBody(DecodeError):
    """A body the worker will not inflate or decode: kombu's decode error, so the consumer's
    `on_decode_error` dead-letters its message."""


def install() -> None:
    """Bound what kombu inflates and decodes of every message of this process (idempotent)."""
    replace_once(kombu.message, "decompress", _bounded_decompress)
    replace_once(pyamqp.Channel, "message_to_python", _checked_message)


def decompressed(body: bytes, compression: Any) -> bytes:
    """`body` inflated as its `compression` header says, as kombu would; UnreadableBody when it
    inflates past BODY_CHECK_LIMIT (inflated no further), is not what that compression writes,
    or names none kombu reads here."""
    if not isinstance(compression, str) or compression not in COMPRESSIONS:
        raise UnreadableBody(
            f"compression {shown(compression)} is not one the worker inflates "
            f"({', '.join(COMPRESSIONS)})"
        )
    try:
        inflating = inflated(body, compression)
    except ValueError as exc:
        raise UnreadableBody(f"the body is not {compression} data: {exc}") from None
    if inflating is None:
        raise UnreadableBody(
            f"the body inflates to more than {BODY_CHECK_LIMIT:,} bytes ({compression}, "
            f"{len(body):,} bytes as sent): not inflated"
        )
    return inflating


def arrived(message: kombu.message.Message) -> bytes:
    """The body of `message` as it arrived, before kombu inflated it (kept by `install()`'s
    hook; without it, the body kombu gave it)."""
    body = getattr(message, _ARRIVED, None)
    if body is None:
        body = message.body
    return body.encode("utf-8") if isinstance(body, str) else bytes(body or b"")


def encoding_problem(content_encoding: Any) -> str | None:
    """Why a message's content encoding is not one the worker decodes its body from, or None."""
    if content_encoding is None or (
        isinstance(content_encoding, str) and content_encoding.lower() in ENCODINGS
    ):
        return None
    return (
        f"content encoding {shown(content_encoding)} is not one the worker decodes a body from "
        f"({', '.join(sorted(ENCODINGS))})"
    )


def _bounded_decompress(original: Callable[..., bytes]) -> Callable[..., bytes]:
    def decompress(body: bytes, content_type: Any) -> bytes:
        return decompressed(body, content_type)

    return decompress


def _checked_message(original: Callable[..., Any]) -> Callable[..., Any]:
    def message_to_python(channel: Any, raw: Any) -> Any:
        message = original(channel, raw)
        setattr(message, _ARRIVED, raw.body)
        wrong = encoding_problem(message.content_encoding)
        if wrong is not None and not message.errors:
            message.errors.append((UnreadableBody, UnreadableBody(wrong), None))
        return message

    return message_to_python
