"""What a task message must hold before Celery may build a request from it (protocol 2).

Celery trusts its messages: a JSON body `{"task": ...}` without an id raised KeyError('id') in
the worker's main process — one small message stopped a deployment. The worker's consumer asks
`problem()` first and dead-letters what fails, and the DLQ consumer asks again to say why such a
letter died. Pure: headers and body in, a sentence or None out — for any headers and body,
never an exception: a JSON body nested 5,000 deep made msgspec raise RecursionError, and a `task`
header nested 966 deep (py-amqp reads it) overflowed repr(), out of the worker's main process
("Unrecoverable error": the worker exited, and met the message again when restarted).

A body may come compressed (kombu's `compression` header): `inflated()` reads it as kombu does,
but no further than a bound, for the worker (service.worker.bodies) and for whoever else reads
a task's body.
"""

from __future__ import annotations

import bz2
import lzma
import reprlib
import zlib
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

import msgspec

JSON_TYPES = frozenset({"application/json", "application/x-docproc-msgspec+json"})
BODY_CHECK_LIMIT = 1024 * 1024
"""Bodies larger than this are left for the pool process to decode (it fails cleanly there). A
compressed body may not inflate past it (service.worker.bodies)."""

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
MAX_NESTING = 32
"""Levels a header's value may nest (Celery's own nest three: x-death, its routing keys). One 966
deep passed py-amqp, then failed to pickle for the pool in the worker's main process, and each
such message kept one of the pool's slots taken: two stopped the worker's processing."""
SHOWN_WIDTH = 80
"""Characters of a header's value that a reason or a log line shows."""

_shown = reprlib.Repr()
_shown.maxlevel = 3  # repr() recursed into a table nested a thousand deep, past Python's limit
_shown.maxstring = _shown.maxother = SHOWN_WIDTH
_shown.maxlist = _shown.maxtuple = _shown.maxdict = _shown.maxset = 4


def shown(value: Any, width: int = SHOWN_WIDTH) -> str:
    """`value` as a reason or a log line may show it: its repr, at most `width` characters of it
    and a few levels of its nesting, whatever it holds."""
    try:
        text = _shown.repr(value)
    except Exception:  # an int past str()'s digits limit, or anything else repr() refuses
        text = f"<{type(value).__name__}>"
    return text[:width]


class _Inflater(Protocol):
    """zlib's, bz2's and lzma's decompressors, as `inflated` uses them."""

    def decompress(self, data: bytes, max_length: int, /) -> bytes: ...

    @property
    def eof(self) -> bool: ...

    @property
    def unused_data(self) -> bytes: ...


def _zlib() -> _Inflater:
    return zlib.decompressobj()


COMPRESSIONS: dict[str, Callable[[], _Inflater]] = {
    # kombu's names and aliases (kombu.compression); "gzip" is zlib's format there. Its others,
    # brotli and zstd, need libraries docproc does not install.
    **dict.fromkeys(("application/x-gzip", "gzip", "zlib"), _zlib),
    **dict.fromkeys(("application/x-bz2", "bzip2", "bzip"), bz2.BZ2Decompressor),
    **dict.fromkeys(("application/x-lzma", "lzma", "xz"), lzma.LZMADecompressor),
}
"""What a `compression` header may name (Celery's `compression=`, done by kombu), as kombu names
it, and how to read it."""
_STREAM_ERRORS = (zlib.error, OSError, EOFError, lzma.LZMAError, ValueError)


def inflated(body: bytes, method: str, limit: int = BODY_CHECK_LIMIT) -> bytes | None:
    """`body` decompressed as kombu does it for `method` (zlib reads one stream; bz2 and lzma read
    streams one after another, and ignore what follows that is none), or None once it passes
    `limit` bytes, having inflated one byte more at most: a body of kilobytes can inflate to
    gigabytes. ValueError when it is not `method`'s data, or `method` none of COMPRESSIONS."""
    make = COMPRESSIONS.get(method) if isinstance(method, str) else None
    if make is None:
        raise ValueError(f"{shown(method)} is not a compression kombu reads")
    pieces: list[bytes] = []
    size, rest = 0, bytes(body)
    while True:
        stream = make()
        try:
            piece = stream.decompress(rest, limit + 1 - size)
        except _STREAM_ERRORS as exc:
            if pieces:
                break
            raise ValueError(str(exc)) from None
        size += len(piece)
        if size > limit:
            return None
        pieces.append(piece)
        if not stream.eof:
            raise ValueError("the compressed stream ends early")
        rest = stream.unused_data
        if not rest or make is _zlib:
            break
    return b"".join(pieces)


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
    said = error if isinstance(error, str) else shown(error) if error is not None else ""
    return f"its properties cannot be read ({said or 'no reason given'}): not a task message"


def _identity(headers: dict[str, Any]) -> str | None:
    task, task_id = headers.get("task"), headers.get("id")
    if task is None:
        return "the message has no Celery task headers (task, id): not a protocol-2 task message"
    if not isinstance(task, str) or not task.strip():
        return f"header task is {type(task).__name__} {shown(task)}, not a task name"
    if not isinstance(task_id, str) or not task_id.strip():
        return f"header id is {type(task_id).__name__} {shown(task_id)}, not a task id"
    return None


def _options(headers: dict[str, Any]) -> str | None:
    retries = headers.get("retries", 0)
    wrong = None
    if retries is not None and (
        not isinstance(retries, int) or isinstance(retries, bool) or not 0 <= retries <= MAX_COUNT
    ):
        wrong = f"header retries is {shown(retries)}, not a count (0 to {MAX_COUNT:,})"
    for name in ("eta", "expires"):
        if wrong is None and not _moment(headers.get(name)):
            wrong = f"header {name} is {shown(headers.get(name))}, not an ISO 8601 time"
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
        wrong = f"header timelimit is {shown(limits)}, not [hard, soft]"
    for name in _OPTIONAL_TEXT:
        value = headers.get(name)
        if wrong is None and value is not None and not isinstance(value, str):
            wrong = f"header {name} is {type(value).__name__}, not text"
    return wrong


def _nesting(headers: dict[str, Any]) -> str | None:
    for name, value in headers.items():
        pending = [(value, 1)]  # no recursion: it is what the header would overflow
        while pending:
            item, level = pending.pop()
            if isinstance(item, dict):
                item = item.values()
            elif not isinstance(item, list | tuple):
                continue
            if level > MAX_NESTING:
                return f"header {shown(name)} nests more than {MAX_NESTING} levels deep"
            pending.extend((inner, level + 1) for inner in item)
    return None


def _body(body: bytes, content_type: str | None) -> str | None:
    if content_type not in JSON_TYPES or len(body) > BODY_CHECK_LIMIT:
        return None
    try:
        decoded = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        return f"the body is not JSON: {exc}"
    except RecursionError:  # msgspec's, past some 990 levels
        return "the body nests too deep to be read: not a task message"
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
    """Why this message cannot be a Celery task request, or None when it can. Never raises:
    what cannot be checked is a reason too."""
    if not isinstance(headers, dict):
        return "the message has no header table"
    try:
        return (
            _unreadable(headers)
            or _identity(headers)
            or _options(headers)
            or _nesting(headers)
            or _body(body, content_type)
        )
    except RecursionError:
        return "the message nests too deep to be checked: not a task message"
    except Exception as exc:  # a check that meets what it did not expect: the message says so
        return f"the message cannot be checked ({type(exc).__name__}): not a task message"
