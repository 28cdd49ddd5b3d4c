"""Logging: JSON lines on stdout through loguru, for every entry point, set up by one function."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from types import FrameType
from typing import IO, TYPE_CHECKING, Any, TypeGuard

import msgspec
from loguru import logger

from service.redaction import redact
from service.terminal import printable

if TYPE_CHECKING:
    from loguru import Message, Record

correlation_id: ContextVar[str | None] = ContextVar("correlation_id", default=None)
"""The id that follows one document from HTTP request to task to dead letter."""

CORRELATION_HEADER = "x-correlation-id"
"""The task message header that carries it."""

_CORRELATION_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


def is_correlation_id(value: object) -> TypeGuard[str]:
    """Whether `value` is acceptable as a correlation id, from an HTTP request's header or a task
    message's: 1 to 128 letters, digits and `._:-` (nothing that forges a log line or that JSON
    cannot encode, as the lone surrogates py-amqp decodes a header's bad UTF-8 into)."""
    return isinstance(value, str) and _CORRELATION_ID.fullmatch(value) is not None


# Libraries whose stdlib logging we take over, so that every line leaves as one JSON object.
INTERCEPTED = (
    "celery",
    "kombu",
    "amqp",
    "aio_pika",
    "aiormq",
    "uvicorn",
    "uvicorn.error",
    "uvicorn.access",
    "litestar",
    "httpx",
    "alembic",
    "sqlalchemy",
    "py.warnings",
)

_encoder = msgspec.json.Encoder(enc_hook=str)


# Start-up chatter of the libraries: useful when something goes wrong, noise otherwise. Logged at
# DEBUG: (logger name prefix, message prefixes — empty for all of that logger's INFO lines).
CHATTER: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("alembic", ()),
    (
        "uvicorn.error",
        (
            "Started server process",
            "Waiting for application",
            "Application",
            "Uvicorn running",
            "Shutting down",
            "Finished server process",
        ),
    ),
    ("celery.worker.consumer", ("Connected to", "mingle:")),
    ("celery.apps.worker", ()),
    ("celery.beat", ("beat: Starting",)),
)

PROBED = ("/health", "/ready")
"""Paths that probes ask every few seconds: uvicorn's access lines for them are at DEBUG."""


def _chatter(name: str, message: str) -> bool:
    return any(
        name.startswith(prefix) and (not starts or message.startswith(starts))
        for prefix, starts in CHATTER
    )


def _probe(record: logging.LogRecord) -> bool:
    """A uvicorn access line for GET or HEAD of a probed path, whatever its query and status
    (uvicorn logs `'%s - "%s %s HTTP/%s" %d'`: client, method, path and query, version, status)."""
    args = record.args
    if record.name != "uvicorn.access" or not isinstance(args, tuple) or len(args) != 5:
        return False
    method, path = args[1], str(args[2])
    return method in ("GET", "HEAD") and path.partition("?")[0] in PROBED


class _InterceptHandler(logging.Handler):
    """Hands stdlib log records to loguru, keeping their level, logger name and caller; the
    libraries' start-up chatter and the access lines of probes go down to DEBUG."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        if record.levelno == logging.INFO and (
            _probe(record) or _chatter(record.name, record.getMessage())
        ):
            level = "DEBUG"
        # Walk out of the logging module so that loguru reports the real caller.
        frame: FrameType | None = logging.currentframe()
        depth = 0
        while frame is not None and frame.f_code.co_filename == logging.__file__:
            frame = frame.f_back
            depth += 1
        logger.opt(depth=depth, exception=record.exc_info).bind(logger=record.name).log(
            level, record.getMessage()
        )


class _JsonSink:
    """Writes one compact JSON object per record."""

    def __init__(self, stream: IO[str], component: str) -> None:
        self._stream = stream
        self._component = component

    def __call__(self, message: Message) -> None:
        record = message.record
        line: dict[str, Any] = {
            "time": record["time"].astimezone(UTC).isoformat(timespec="milliseconds"),
            "level": record["level"].name,
            "message": redact(record["message"]),
            "logger": record["extra"].get("logger", record["name"]),
            "component": self._component,
            "pid": record["process"].id,
        }
        line.update((k, v) for k, v in record["extra"].items() if k != "logger")
        if record["exception"] is not None:
            exc_type, exc, _ = record["exception"]
            line["error_type"] = exc_type.__name__ if exc_type else None
            line["error"] = redact(_text_of(exc))
            line["traceback"] = redact("".join(_format_exception(record)))
        self._stream.write(_json_line(line))
        self._stream.flush()


def _json_line(fields: dict[str, Any]) -> str:
    """`fields` as one line of JSON, whatever they hold: a value msgspec cannot encode (a string
    with a lone surrogate, as py-amqp decodes a header's bad UTF-8; an object whose `__str__`
    raises) goes as its text with such surrogates escaped ("\\udcff"), never as an error that
    loguru would print as a multi-line dump instead of the line."""
    try:
        encoded = _encoder.encode(fields)
    except Exception:  # a log line is written whatever it holds
        encoded = _encoder.encode({_unsurrogated(k): _encodable(v) for k, v in fields.items()})
    return encoded.decode() + "\n"


def _encodable(value: object) -> object:
    try:
        _encoder.encode(value)
    except Exception:
        return _unsurrogated(_text_of(value))
    return value


def _text_of(value: object) -> str:
    try:
        return str(value)
    except Exception:
        return f"<{type(value).__name__} whose str() failed>"


def _unsurrogated(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _format_exception(record: Record) -> list[str]:
    exception = record["exception"]
    if exception is None:
        return []
    return traceback.format_exception(exception.type, exception.value, exception.traceback)


def _add_correlation_id(record: Record) -> None:
    cid = correlation_id.get()
    if cid is not None:
        record["extra"].setdefault("correlation_id", cid)


class _HumanSink:
    """One readable line per record, for a person at a terminal: a message cannot retitle the
    window, recolour the screen or forge a line of its own (its control characters are escaped);
    a traceback keeps its lines."""

    def __init__(self, stream: IO[str], component: str) -> None:
        self._stream = stream
        self._component = component

    def __call__(self, message: Message) -> None:
        record = message.record
        line = (
            f"{record['time'].strftime('%H:%M:%S')} {self._component:<6} "
            f"{record['level'].name:<7} {printable(redact(record['message']))}"
        )
        if record["exception"] is not None:
            line += "\n" + _printable_traceback(record)
        self._stream.write(line + "\n")
        self._stream.flush()


def _printable_traceback(record: Record) -> str:
    """The record's traceback with its own lines kept, and each exception's message — which may
    quote a stranger's task id or header — escaped whole, so that it cannot forge a line."""
    trace = "".join(_format_exception(record))
    exception = record["exception"]
    for exc in _chained(exception.value if exception else None):
        said = "".join(traceback.format_exception_only(exc)).rstrip("\n")
        trace = trace.replace(said, printable(said))
    return printable(redact(trace).rstrip(), lines=True)


def _chained(exc: BaseException | None) -> Iterator[BaseException]:
    """`exc` and every exception its traceback may show: causes, contexts and a group's."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        exc = todo.pop()
        if exc is None or id(exc) in seen:
            continue
        seen.add(id(exc))
        yield exc
        todo += (exc.__cause__, exc.__context__)
        if isinstance(exc, BaseExceptionGroup):
            todo += exc.exceptions


_configured: dict[str, str] = {}


def current_component() -> str | None:
    """The component the process's entry point set up logging for (Celery's own setup_logging
    signal comes later, in the worker and in beat alike, and must keep it)."""
    return _configured.get("component")


def setup_logging(
    level: str = "INFO",
    *,
    component: str,
    log_format: str = "auto",
    stream: IO[str] | None = None,
) -> None:
    """Send docproc's and the libraries' logs to `stream` (stdout): JSON lines, or readable lines
    when `log_format` is "human" (and by default when stdout is a terminal)."""
    out = stream or sys.__stdout__ or sys.stdout
    if log_format == "auto":
        log_format = "human" if out.isatty() else "json"
    _configured.update(component=component, log_format=log_format)
    logger.remove()
    logger.configure(patcher=_add_correlation_id)
    sink = _HumanSink(out, component) if log_format == "human" else _JsonSink(out, component)
    logger.add(sink, level=level, format="{message}", backtrace=False, diagnose=False)
    handler = _InterceptHandler()
    logging.basicConfig(
        handlers=[handler], level=logging.getLevelName(_stdlib_level(level)), force=True
    )
    for name in INTERCEPTED:
        library = logging.getLogger(name)
        library.handlers = []
        library.propagate = True
    logging.captureWarnings(True)
    # pypdf reports every quirk of a damaged file it still reads; the failures we raise say enough.
    logging.getLogger("pypdf").setLevel(logging.ERROR)


def plain_line(message: str, level: str = "INFO") -> str:
    """`message` as one line of the configured format, built without loguru: for code that
    must not take locks (Celery prints from signal handlers, see `say_from_signal_handler`)."""
    component = _configured.get("component", "docproc")
    now = datetime.now(UTC)
    if _configured.get("log_format") == "human":
        return f"{now:%H:%M:%S} {component:<6} {level:<7} {printable(redact(message))}\n"
    fields = {
        "time": now.isoformat(timespec="milliseconds"),
        "level": level,
        "message": redact(message),
        "logger": "celery.apps.worker",
        "component": component,
        "pid": os.getpid(),
    }
    return _json_line(fields)


def say_from_signal_handler(msg: str, f: IO[str] | None = sys.__stderr__) -> None:
    """Celery's `safe_say`, in docproc's log format ("Warm shutdown (MainProcess)" was the one
    line of a worker's output that was not): written with os.write, no lock taken."""
    stream = f if f is not None and hasattr(f, "fileno") else sys.__stderr__
    with contextlib.suppress(OSError, ValueError, AttributeError):
        os.write(stream.fileno(), plain_line(str(msg).strip()).encode())  # type: ignore[union-attr]


def _stdlib_level(level: str) -> str:
    return {"TRACE": "DEBUG", "SUCCESS": "INFO"}.get(level, level)


@contextmanager
def correlated(cid: str | None) -> Iterator[None]:
    """Bind `cid` to every log line written inside the block."""
    token = correlation_id.set(cid)
    try:
        yield
    finally:
        correlation_id.reset(token)
