"""The engine for one database URL: SQLite (WAL, a busy timeout) or PostgreSQL (psycopg)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import sqlalchemy
from sqlalchemy import Engine, event
from sqlalchemy.engine import URL, make_url

from service.errors import ConfigError
from service.store.sqlite_turns import TurnTakingConnection

BUSY_TIMEOUT_MS = 10_000
"""How long a SQLite writer waits for another process's write lock before giving up."""


def _driver_url(url: str) -> URL:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return parsed.set(drivername="sqlite+pysqlite")
    if parsed.get_backend_name() in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+psycopg")
    raise ValueError(f"unsupported database URL {url!r}")


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL, None for anything else."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    return Path(parsed.database)


def _prepare_sqlite_file(url: str) -> None:
    path = sqlite_path(url)
    if path is not None and str(path) != ":memory:":
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a file on the way, /proc, no permission: a setting to change
            raise ConfigError(
                f"cannot create the store's directory {path.parent} ({exc.strerror}): set "
                "DOCPROC_DATA_DIR, or the path in DOCPROC_DATABASE_URL, to a directory docproc "
                "can create and write"
            ) from exc


def _sqlite_setup(busy_timeout_ms: int) -> Callable[[Any, Any], None]:
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # WAL lets readers (API) run beside one writer (worker). FULL: a commit is on disk
        # (the WAL synced) before it returns — the 202 of an upload and the ack of a task
        # follow a commit, and NORMAL would lose the last of them to a power loss or a kernel
        # crash (~0.3 ms a commit here; uploads commit in groups).
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    return on_connect


_DECODER = msgspec.json.Decoder()


def json_text(value: Any) -> str:
    """A JSON column's text: by msgspec (several times quicker than the json module)."""
    try:
        return msgspec.json.encode(value).decode()
    except (TypeError, ValueError, msgspec.EncodeError):
        # What msgspec refuses (a lone surrogate) goes as SQLAlchemy would send it: the store
        # takes it or refuses it as before.
        return json.dumps(value)


def json_value(text: str | bytes) -> Any:
    """A JSON column's value: by msgspec, or by the json module for what msgspec refuses and
    the json module reads (a number beyond a double, PostgreSQL's `numeric`; `NaN` in a SQLite
    row written before)."""
    try:
        return _DECODER.decode(text)
    except msgspec.DecodeError:
        return json.loads(text)


def sync_engine(
    url: str,
    *,
    pool_size: int = 5,
    autocommit: bool = False,
    busy_timeout_ms: int = BUSY_TIMEOUT_MS,
) -> Engine:
    """The engine; `pool_size` connections are kept open (as many as threads that use it).

    `autocommit` (PostgreSQL): connections in autocommit, not pinged when taken from the pool —
    for reads only, which can be made again on a new connection when one is found dead.
    `busy_timeout_ms` (SQLite): how long a statement waits for a lock another connection holds;
    0 makes it fail at once ("database is locked").
    """
    _prepare_sqlite_file(url)
    driver_url = _driver_url(url)
    # sqlalchemy.create_engine looked up at each call: tracing (service.telemetry) wraps it.
    if driver_url.get_backend_name() == "sqlite":
        engine = sqlalchemy.create_engine(
            driver_url,
            pool_size=pool_size,
            connect_args={
                "timeout": busy_timeout_ms / 1000,
                "check_same_thread": False,
                "factory": TurnTakingConnection,  # writers take turns: service.store.sqlite_turns
            },
            json_serializer=json_text,
            json_deserializer=json_value,
        )
        event.listen(engine, "connect", _sqlite_setup(busy_timeout_ms))
        return engine
    # Not pinged in autocommit; otherwise the server's own isolation level, as it is set.
    reads: dict[str, Any] = {"isolation_level": "AUTOCOMMIT"} if autocommit else {}
    return sqlalchemy.create_engine(
        driver_url,
        pool_pre_ping=not autocommit,
        **reads,
        pool_size=pool_size,
        connect_args={"connect_timeout": 5},
        json_serializer=json_text,
        json_deserializer=json_value,
    )


__all__ = ["is_sqlite", "json_text", "json_value", "sqlite_path", "sync_engine"]
