"""What a dead message says about itself: why and where it died (x-death), which Celery task it
was, its arguments where the content type allows, and a key that recognises it when redelivered."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

import msgspec

from service import task_protocol
from service.deadletters.headers import to_json
from service.logs import CORRELATION_HEADER
from service.serialization import CONTENT_TYPE as MSGSPEC_CONTENT_TYPE
from service.store.dead_letters import NewDeadLetter
from service.task_contract import (
    ERROR_MESSAGE_HEADER,
    ERROR_TYPE_HEADER,
    REPUBLISHED_FROM_HEADER,
)
from service.task_protocol import BODY_CHECK_LIMIT, COMPRESSIONS, UNREADABLE_PROPERTIES, problem

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


def message_key(raw: RawMessage, converted: tuple[Any, Any] | None = None) -> str:
    """The message's key: its body, stable headers and properties hashed. `converted` is the
    headers and properties as `to_json` made them, when the caller has them already (`read`)."""
    try:
        if converted is None or not _VOLATILE_HEADERS.isdisjoint(raw.headers):
            converted = (to_json(_stable(raw.headers)), to_json(raw.properties))
        canonical = msgspec.json.encode(list(converted), order="sorted")
    except Exception:  # not JSON (TypeError…), or nested past Python's stack (RecursionError)
        canonical = _outline(raw.headers)
    return hashlib.sha256(raw.body + b"\x00" + canonical).hexdigest()


def _stable(headers: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in headers.items() if k not in _VOLATILE_HEADERS}


def _outline(headers: Any) -> bytes:
    """The stable headers as text, for a key when JSON cannot hold them; their names alone
    when they nest deeper than `repr` reaches."""
    try:
        return repr(sorted(_stable(headers).items(), key=str)).encode("utf-8", "replace")
    except Exception:
        names = sorted(map(str, headers)) if isinstance(headers, dict) else []
        return repr(names).encode("utf-8", "replace")


def escaped(value: Any) -> str:
    """`value` written out as ASCII text (its `repr`, escaped), or what it is when it nests
    deeper than `repr` reaches: the stored form of what cannot be stored as it is."""
    try:
        text = repr(value)
    except Exception as exc:
        text = f"<{type(value).__name__} that cannot be written out: {_said(exc)}>"
    return text.encode("ascii", "backslashreplace").decode("ascii")


def _said(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


_UNCONVERTIBLE = object()


def _converted(value: Any) -> Any:
    """`to_json(value)`, or `_UNCONVERTIBLE` (the reader says why when it meets it)."""
    try:
        return to_json(value)
    except Exception:  # TypeError, ValueError; RecursionError past Python's stack
        return _UNCONVERTIBLE


class _Reader:
    """Reads a message's fields leniently: what it cannot read becomes None (or a default) and a
    line in `problems`, stored with the record. It never raises: one strange letter must not stop
    the DLQ consumer, which would meet it again at every delivery."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def note(self, problem: str) -> None:
        if problem not in self.problems:
            self.problems.append(problem)

    def text(self, name: str, value: Any, limit: int | None = None) -> str | None:
        """Text a store column can hold: no NUL (PostgreSQL refuses it), at most `limit`."""
        if value is None:
            return None
        if isinstance(value, bytes | bytearray):
            text = bytes(value).decode("utf-8", "replace")
        elif isinstance(value, str):
            text = value
        else:
            self.note(f"{name} is {type(value).__name__}, stored as text")
            text = str(value)
        if "\x00" in text:
            self.note(f"{name} held NUL characters, replaced by U+FFFD")
            text = text.replace("\x00", "\ufffd")
        if limit is not None and len(text) > limit:
            self.note(f"{name} was {len(text)} characters, cut to {limit}")
            text = text[:limit]
        return text

    def count(self, name: str, value: Any, default: int | None) -> int | None:
        if value is None:
            return default
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        self.note(f"{name} {value!r:.60} is not a count")
        return default

    def time(self, name: str, value: Any) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, datetime):
            try:
                return value if value.tzinfo else value.replace(tzinfo=UTC)
            except (OverflowError, ValueError):
                pass
        self.note(f"{name} {value!r:.60} is not a time")
        return None

    def json(self, name: str, value: Any, converted: Any = _UNCONVERTIBLE) -> Any:
        """A header table or argument as JSON the store takes (text without NUL); `converted` is
        `to_json(value)` when the caller made it."""
        try:
            if converted is _UNCONVERTIBLE:
                converted = to_json(value)
            encoded = msgspec.json.encode(converted)
        except RecursionError as exc:  # nested past Python's stack; the body keeps it
            self.note(f"{name} could not be read as JSON ({_said(exc)}); stored as its text")
            return self.text(name, escaped(value))
        except (TypeError, ValueError, msgspec.EncodeError) as exc:
            self.note(f"{name} could not be read as JSON ({exc}); stored as its text")
            return self.text(name, repr(value))
        if b"\\u0000" in encoded:
            self.note(f"{name} held NUL characters, replaced by U+FFFD")
            return msgspec.json.decode(encoded.replace(b"\\u0000", b"\\ufffd"))
        return converted

    def deaths(self, headers: dict[str, Any]) -> list[dict[str, Any]]:
        deaths = headers.get("x-death")
        if deaths is None:
            return []
        if isinstance(deaths, list) and all(isinstance(d, dict) for d in deaths):
            return deaths
        self.note(f"x-death is {type(deaths).__name__}, not a list of tables")
        return []

    def routing_keys(self, value: Any) -> list[str]:
        if value is None:
            return []
        if not isinstance(value, list):
            self.note(f"routing-keys is {type(value).__name__}, not a list")
            value = [value]
        return [self.text("routing-keys", key, 255) or "" for key in value]


COMPRESSION_HEADER = "compression"
"""Where kombu says how it compressed a body (Celery's `compression=`); its worker decompresses
before it decodes, so the DLQ does the same before it reads the arguments."""


def _task_body(
    headers: dict[str, Any], body: bytes, reader: _Reader
) -> tuple[bytes | None, str | None]:
    """The body as the worker reads it — decompressed as its `compression` header says — or
    None when it is not read here (inflating past BODY_CHECK_LIMIT, a method not known here),
    with why it cannot be a task's body when that is certain (it does not decompress)."""
    method = headers.get(COMPRESSION_HEADER)
    if method is None:
        return body, None
    if not isinstance(method, str) or method not in COMPRESSIONS:
        reader.note(f"the body is compressed as {method!r:.60}, not read here: no arguments")
        return None, None
    try:
        inflated = task_protocol.inflated(body, method)
    except ValueError as exc:
        return (
            None,
            f"the body does not decompress as its compression header says ({method}: {exc})",
        )
    if inflated is None:
        reader.note(
            f"the body inflates past {BODY_CHECK_LIMIT:,} bytes ({method}): not read, no arguments"
        )
    return inflated, None


def _arguments(body: bytes | None, content_type: str | None, reader: _Reader) -> tuple[Any, Any]:
    """Task args and kwargs, when the body is JSON (Celery protocol 2: [args, kwargs, embed])."""
    if body is None or content_type not in _JSON_TYPES:
        return None, None
    try:
        decoded = msgspec.json.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None, None  # `problem` says so
    except Exception as exc:  # RecursionError: nested past Python's stack
        reader.note(f"the body could not be read as JSON ({_said(exc)}); kept as it came")
        return None, None
    if isinstance(decoded, list) and len(decoded) == 3:
        return decoded[0], decoded[1]
    return None, None


def _problem(
    headers: dict[str, Any], body: bytes | None, content_type: str | None, reader: _Reader
) -> str | None:
    """`problem()` of the body as the worker reads it; of the headers alone when the body is
    not read here. A check that breaks is said in `problems`, and claims nothing."""
    try:
        return problem(headers, b"", None) if body is None else problem(headers, body, content_type)
    except Exception as exc:
        reader.note(f"the message could not be checked as a task message ({_said(exc)})")
        return None


def _read(raw: RawMessage) -> NewDeadLetter:
    reader = _Reader()
    headers = raw.headers if isinstance(raw.headers, dict) else {}
    properties = raw.properties if isinstance(raw.properties, dict) else {}
    # Converted once, for the key and for the record: the headers are most of a letter's work.
    tables = (_converted(headers), _converted(properties))
    whole = (
        headers is raw.headers
        and properties is raw.properties
        and all(t is not _UNCONVERTIBLE for t in tables)
    )
    deaths = reader.deaths(headers)
    death = deaths[0] if deaths else {}
    times = [t for t in (reader.time("x-death time", d.get("time")) for d in deaths) if t]
    content_type = reader.text("content_type", properties.get("content_type"), 255)
    body, undecodable = _task_body(headers, raw.body, reader)
    args, kwargs = _arguments(body, content_type, reader)
    # The last failure, as the worker's retry carried it: what the store may not have recorded.
    error_type = reader.text(ERROR_TYPE_HEADER, headers.get(ERROR_TYPE_HEADER), 255)
    error_message = reader.text(ERROR_MESSAGE_HEADER, headers.get(ERROR_MESSAGE_HEADER))
    wrong = _problem(headers, body, content_type, reader) or undecodable
    if wrong is not None:
        error_type = (
            "UnreadableProperties"
            if UNREADABLE_PROPERTIES in headers
            else "NotACeleryMessage"
            if "task" not in headers
            else "MalformedTaskMessage"
        )
        error_message = wrong
    return NewDeadLetter(
        message_key=message_key(raw, tables if whole else None),
        body=raw.body,
        content_type=content_type,
        content_encoding=reader.text("content_encoding", properties.get("content_encoding"), 255),
        headers=reader.json("headers", headers, tables[0]),
        properties=reader.json("properties", properties, tables[1]),
        reason=reader.text("x-death reason", death.get("reason"), 32) or "unknown",
        queue=reader.text("x-death queue", death.get("queue") or raw.routing_key, 255) or "unknown",
        exchange=reader.text("x-death exchange", death.get("exchange"), 255),
        routing_keys=reader.routing_keys(death.get("routing-keys")),
        death_count=reader.count("x-death count", death.get("count"), 1) or 1,
        first_death_at=min(times) if times else None,
        dead_at=reader.time("x-death time", death.get("time")) or datetime.now(UTC),
        task_name=reader.text("task", headers.get("task"), 255),
        task_id=reader.text("id", headers.get("id"), 255),
        args=reader.json("args", args),
        kwargs=reader.json("kwargs", kwargs),
        retries=reader.count("retries", headers.get("retries"), None),
        root_id=reader.text("root_id", headers.get("root_id"), 255),
        parent_id=reader.text("parent_id", headers.get("parent_id"), 255),
        correlation_id=reader.text(
            "correlation id",
            headers.get(CORRELATION_HEADER) or properties.get("correlation_id"),
            255,
        ),
        error_type=error_type,
        error_message=error_message,
        traceback=None,
        republished_from=reader.text(
            REPUBLISHED_FROM_HEADER, headers.get(REPUBLISHED_FROM_HEADER), 36
        ),
        problems=reader.problems or None,
    )


def read(raw: RawMessage) -> NewDeadLetter:
    """The record to store for `raw`, whatever it holds. It never raises: a letter whose reading
    breaks (a case no reader foresaw) is stored in its least form, rather than stop the DLQ
    consumer, which would meet it again at every delivery."""
    try:
        return _read(raw)
    except Exception as exc:
        return _unread(
            raw, f"the letter could not be read ({_said(exc)}); stored in its least form"
        )


def _unread(raw: RawMessage, why: str) -> NewDeadLetter:
    """The least record of a letter: its body byte for byte, its headers and properties as
    escaped text, its task and id if they are text, and why."""
    reader = _Reader()
    headers = raw.headers if isinstance(raw.headers, dict) else {}

    def text(name: str, value: Any) -> str | None:
        return reader.text(name, value, 255) if isinstance(value, str) else None

    return NewDeadLetter(
        message_key=message_key(raw),
        body=raw.body,
        content_type=None,
        content_encoding=None,
        headers={"unreadable": escaped(raw.headers)},
        properties={"unreadable": escaped(raw.properties)},
        reason="unknown",
        queue=text("routing key", raw.routing_key) or "unknown",
        exchange=None,
        routing_keys=[],
        death_count=1,
        first_death_at=None,
        dead_at=datetime.now(UTC),
        task_name=text("task", headers.get("task")),
        task_id=text("id", headers.get("id")),
        args=None,
        kwargs=None,
        retries=None,
        root_id=None,
        parent_id=None,
        correlation_id=None,
        error_type=None,
        error_message=None,
        traceback=None,
        republished_from=None,
        problems=[why, *reader.problems],
    )
