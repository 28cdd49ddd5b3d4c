"""What a task message must hold before Celery may build a request from it (protocol 2).

Celery trusts its messages: a JSON body `{"task": ...}` without an id raised KeyError('id') in
the worker's main process — one small message stopped a deployment. The worker's consumer asks
`problem()` first and dead-letters what fails, and the DLQ consumer asks again to say why such a
letter died. Pure: headers and body in, a sentence or None out.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

JSON_TYPES = frozenset({"application/json", "application/x-docproc-msgspec+json"})
BODY_CHECK_LIMIT = 1024 * 1024
"""Bodies larger than this are left for the pool process to decode (it fails cleanly there)."""

UNREADABLE_PROPERTIES = "x-docproc-unreadable-properties"
"""The one header of a message whose properties its reader could not read, set in place of them
by the consumers' frame hooks (`service.worker.frames`, `service.deadletters.frames`): `error`,
and on the DLQ consumer's side the properties' raw bytes, kept with the letter."""

MESSAGE_PROBLEMS = frozenset({"UnreadableProperties", "NotACeleryMessage", "MalformedTaskMessage"})
"""The error types of a dead letter whose message itself could not be a task request (`problem`):
what it says of itself, whatever became of a task of the same id."""

MAX_COUNT = 2**31 - 1
"""The largest count a store keeps (an INTEGER column on PostgreSQL): a task's retries above it
could not be recorded."""

_OPTIONAL_TEXT = ("root_id", "parent_id", "group", "shadow", "argsrepr", "kwargsrepr", "origin")


def _moment(value: Any) -> bool:
    if value is None:
        return True
    if not isinstance(value, str):
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def _unreadable(headers: dict[str, Any]) -> str | None:
    if UNREADABLE_PROPERTIES not in headers:
        return None
    unreadable = headers[UNREADABLE_PROPERTIES]
    error = unreadable.get("error") if isinstance(unreadable, dict) else None
    return f"its properties cannot be read ({error or 'no reason given'}): not a task message"


def _identity(headers: dict[str, Any]) -> str | None:
    task, task_id = headers.get("task"), headers.get("id")
    if task is None:
        return "the message has no Celery task headers (task, id): not a protocol-2 task message"
    if not isinstance(task, str) or not task.strip():
        return f"header task is {type(task).__name__} {task!r:.80}, not a task name"
    if not isinstance(task_id, str) or not task_id.strip():
        return f"header id is {type(task_id).__name__} {task_id!r:.80}, not a task id"
    return None


def _options(headers: dict[str, Any]) -> str | None:
    retries = headers.get("retries", 0)
    wrong = None
    if retries is not None and (
        not isinstance(retries, int) or isinstance(retries, bool) or not 0 <= retries <= MAX_COUNT
    ):
        wrong = f"header retries is {retries!r:.80}, not a count (0 to {MAX_COUNT:,})"
    for name in ("eta", "expires"):
        if wrong is None and not _moment(headers.get(name)):
            wrong = f"header {name} is {headers.get(name)!r:.80}, not an ISO 8601 time"
    limits = headers.get("timelimit")
    if (
        wrong is None
        and limits is not None
        and (
            not isinstance(limits, list | tuple)
            or len(limits) != 2
            or not all(limit is None or isinstance(limit, int | float) for limit in limits)
        )
    ):
        wrong = f"header timelimit is {limits!r:.80}, not [hard, soft]"
    for name in _OPTIONAL_TEXT:
        value = headers.get(name)
        if wrong is None and value is not None and not isinstance(value, str):
            wrong = f"header {name} is {type(value).__name__}, not text"
    return wrong


def _body(body: bytes, content_type: str | None) -> str | None:
    if content_type not in JSON_TYPES or len(body) > BODY_CHECK_LIMIT:
        return None
    try:
        decoded = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        return f"the body is not JSON: {exc}"
    if (
        isinstance(decoded, list)
        and len(decoded) == 3
        and isinstance(decoded[0], list)
        and isinstance(decoded[1], dict)
        and isinstance(decoded[2], dict | None)
    ):
        return None
    return "the body is not [args, kwargs, embed] (Celery protocol 2)"


def problem(headers: Any, body: bytes, content_type: str | None) -> str | None:
    """Why this message cannot be a Celery task request, or None when it can."""
    if not isinstance(headers, dict):
        return "the message has no header table"
    return (
        _unreadable(headers) or _identity(headers) or _options(headers) or _body(body, content_type)
    )
