"""Logging: JSON lines on stdout through loguru, for every entry point, set up by one function."""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC
from types import FrameType
from typing import IO, TYPE_CHECKING, Any

import msgspec
from loguru import logger

from service.redaction import redact

if TYPE_CHECKING:
    from loguru import Message, Record

correlation_id: ContextVar[str | None] = ContextVar("correlation_id", default=None)
"""The id that follows one document from HTTP request to task to dead letter."""

CORRELATION_HEADER = "x-correlation-id"
"""The task message header that carries it."""

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


class _InterceptHandler(logging.Handler):
    """Hands stdlib log records to loguru, keeping their level, logger name and caller."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
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
            line["error"] = redact(str(exc))
            line["traceback"] = redact("".join(_format_exception(record)))
        self._stream.write(_encoder.encode(line).decode() + "\n")
        self._stream.flush()


def _format_exception(record: Record) -> list[str]:
    exception = record["exception"]
    if exception is None:
        return []
    return traceback.format_exception(exception.type, exception.value, exception.traceback)


def _add_correlation_id(record: Record) -> None:
    cid = correlation_id.get()
    if cid is not None:
        record["extra"].setdefault("correlation_id", cid)


def setup_logging(level: str = "INFO", *, component: str, stream: IO[str] | None = None) -> None:
    """Send docproc's and the libraries' logs to `stream` (stdout) as JSON lines."""
    logger.remove()
    logger.configure(patcher=_add_correlation_id)
    logger.add(
        _JsonSink(stream or sys.__stdout__ or sys.stdout, component),
        level=level,
        format="{message}",
        backtrace=False,
        diagnose=False,
    )
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
