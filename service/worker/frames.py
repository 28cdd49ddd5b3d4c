"""A task message whose properties cannot be read is dead-lettered, not a crash (the worker's).

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
"""

from __future__ import annotations

from typing import Any

from amqp.serialization import GenericContent
from loguru import logger

from service.task_protocol import UNREADABLE_PROPERTIES

_ERROR_CHARS = 1000


def install() -> None:
    """Read every content header of this process tolerantly (idempotent)."""
    original: Any = GenericContent._load_properties  # type: ignore[attr-defined]  # not in the stub
    if getattr(original, "tolerant", False):
        return

    def tolerant(content: GenericContent, class_id: int, buf: bytes, offset: int) -> int:
        try:
            loaded: int = original(content, class_id, buf, offset)
        except Exception as exc:  # RecursionError, ValueError, UnicodeDecodeError: whatever it is
            error = f"{type(exc).__name__}: {exc}"[:_ERROR_CHARS]
            logger.warning("a message's properties cannot be read ({}); dead-lettering it", error)
            content.properties = {"application_headers": {UNREADABLE_PROPERTIES: {"error": error}}}
            return len(buf)  # the properties end the frame
        return loaded

    tolerant.tolerant = True  # type: ignore[attr-defined]
    GenericContent._load_properties = tolerant  # type: ignore[attr-defined]
