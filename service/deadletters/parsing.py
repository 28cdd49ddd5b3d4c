"""What a dead message says about itself: why and where it died (x-death), which Celery task it
was, its arguments where the content type allows, and a key that recognises it when redelivered."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

import msgspec

from service.deadletters.headers import to_json
from service.logs import CORRELATION_HEADER
from service.serialization import CONTENT_TYPE as MSGSPEC_CONTENT_TYPE
from service.store.dead_letters import NewDeadLetter
from service.tasks import ERROR_MESSAGE_HEADER, ERROR_TYPE_HEADER

REPUBLISHED_FROM_HEADER = "x-docproc-republished-from"
"""Lineage: the dead letter a re-published message came from."""
REPUBLISH_COUNT_HEADER = "x-docproc-republish-count"

_JSON_TYPES = {"application/json", MSGSPEC_CONTENT_TYPE}
# Headers that change between deliveries of the same message (quorum queues count them).
_VOLATILE_HEADERS = {"x-delivery-count"}


class RawMessage(msgspec.Struct, frozen=True, kw_only=True):
    """A message as it came off the dead-letter queue, whatever library read it."""

    body: bytes
    headers: dict[str, Any]
    properties: dict[str, Any]
    routing_key: str | None = None
    redelivered: bool = False


def message_key(raw: RawMessage) -> str:
    stable = {k: v for k, v in raw.headers.items() if k not in _VOLATILE_HEADERS}
    canonical = msgspec.json.encode([to_json(stable), to_json(raw.properties)], order="sorted")
    return hashlib.sha256(raw.body + b"\x00" + canonical).hexdigest()


def _death(headers: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and all(isinstance(d, dict) for d in deaths):
        return deaths[0], deaths
    return {}, []


def _time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _arguments(raw: RawMessage, content_type: str | None) -> tuple[Any, Any]:
    """Task args and kwargs, when the body is JSON (Celery protocol 2: [args, kwargs, embed])."""
    if content_type not in _JSON_TYPES:
        return None, None
    try:
        body = msgspec.json.decode(raw.body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None, None
    if isinstance(body, list) and len(body) == 3:
        return body[0], body[1]
    if isinstance(body, dict) and "task" in body:  # protocol 1
        return body.get("args"), body.get("kwargs")
    return None, None


def read(raw: RawMessage) -> NewDeadLetter:
    """The record to store for `raw`."""
    headers = raw.headers
    properties = raw.properties
    death, deaths = _death(headers)
    times = [t for t in (_time(d.get("time")) for d in deaths) if t is not None]
    content_type = _text(properties.get("content_type"))
    args, kwargs = _arguments(raw, content_type)
    task_name = _text(headers.get("task"))
    task_id = _text(headers.get("id"))
    # The last failure, as the worker's retry carried it: what the store may not have recorded.
    error_type = _text(headers.get(ERROR_TYPE_HEADER))
    error_message = _text(headers.get(ERROR_MESSAGE_HEADER))
    if task_name is None:
        error_type = "NotACeleryMessage"
        error_message = "the message has no Celery task headers (task, id)"
    retries = headers.get("retries")
    return NewDeadLetter(
        message_key=message_key(raw),
        body=raw.body,
        content_type=content_type,
        content_encoding=_text(properties.get("content_encoding")),
        headers=to_json(headers),
        properties=to_json(properties),
        reason=_text(death.get("reason")) or "unknown",
        queue=_text(death.get("queue")) or raw.routing_key or "unknown",
        exchange=_text(death.get("exchange")),
        routing_keys=[_text(k) or "" for k in death.get("routing-keys") or []],
        death_count=int(death.get("count") or 1),
        first_death_at=min(times) if times else None,
        dead_at=_time(death.get("time")) or datetime.now(UTC),
        task_name=task_name,
        task_id=task_id,
        args=to_json(args),
        kwargs=to_json(kwargs),
        retries=retries if isinstance(retries, int) else None,
        root_id=_text(headers.get("root_id")),
        parent_id=_text(headers.get("parent_id")),
        correlation_id=_text(headers.get(CORRELATION_HEADER) or properties.get("correlation_id")),
        error_type=error_type,
        error_message=error_message,
        traceback=None,
        republished_from=_text(headers.get(REPUBLISHED_FROM_HEADER)),
    )
