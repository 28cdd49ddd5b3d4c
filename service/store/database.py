"""`Store` (synchronous: the worker) and `AsyncStore` (async: API, DLQ consumer) run operations.

An operation is a plain function whose first argument is a SQLAlchemy Connection; it runs in one
transaction. AsyncStore runs the same function on an async driver through SQLAlchemy's greenlet
bridge (`run_sync`), so each query is written once and the event loop never blocks on it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar

import msgspec
from sqlalchemy import Connection, Row, Table
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)

from service.errors import DatabaseError, StoreRejected, StoreUnavailable
from service.store.engine import async_engine, is_sqlite, sync_engine
from service.store.migrations import upgrade

P = ParamSpec("P")
R = TypeVar("R")
S = TypeVar("S", bound=msgspec.Struct)

Operation = Callable[Concatenate[Connection, P], R]


# SQLSTATE classes and codes of PostgreSQL that mean "cannot be reached", not "this failed":
# connection exceptions, admin shutdown / crash / cannot connect now, too many connections.
_PG_UNREACHABLE = ("08", "57P01", "57P02", "57P03", "53300")
_SQLITE_UNREACHABLE = ("database is locked", "unable to open", "disk i/o error", "is full")


def _unreachable(exc: SQLAlchemyError) -> bool:
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    if not isinstance(exc, OperationalError | InterfaceError):
        return False
    original = getattr(exc, "orig", None)
    state = getattr(original, "sqlstate", None)
    if state is not None:
        return str(state).startswith(_PG_UNREACHABLE)
    text = str(original or exc).lower()
    if "sqlite" in type(original).__module__:
        return any(sign in text for sign in _SQLITE_UNREACHABLE)
    return True  # a driver error without a SQLSTATE: the connection itself failed


# PostgreSQL aborts one of two transactions that deadlock or conflict (SQLSTATE 40P01, 40001):
# the whole transaction is run again, as the error asks.
_RETRIED = ("40P01", "40001")
ATTEMPTS = 3


def _retried(exc: SQLAlchemyError) -> bool:
    return str(getattr(getattr(exc, "orig", None), "sqlstate", "")) in _RETRIED


def _unavailable(exc: SQLAlchemyError) -> DatabaseError:
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    if _unreachable(exc):
        return StoreUnavailable(f"the store is unavailable: {reason}")
    if isinstance(exc, DataError):
        return StoreRejected(f"the store refused a value: {reason}")
    return DatabaseError(f"the store failed: {reason}")


class Store:
    """The store through a synchronous engine; one per process (engines do not survive fork)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = sync_engine(url)

    def run(self, operation: Operation[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        for attempt in range(1, ATTEMPTS + 1):
            try:
                with self.engine.begin() as connection:
                    return operation(connection, *args, **kwargs)
            except SQLAlchemyError as exc:
                if attempt == ATTEMPTS or not _retried(exc):
                    raise _unavailable(exc) from exc
        raise AssertionError("unreachable")

    def migrate(self) -> str:
        return upgrade(self.url)

    def close(self) -> None:
        self.engine.dispose()


class AsyncStore:
    """The store through an async engine, for code on an event loop.

    `run` for reads, `write` for operations that write: on SQLite, writers of one process take
    turns on the event loop instead of fighting over the database's lock inside SQLite, whose
    busy handler sleeps in growing steps (that is what made concurrent uploads slow, and their
    latency jump to a second). PostgreSQL takes concurrent writers as they come.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = async_engine(url)
        self._writers = asyncio.Lock() if is_sqlite(url) else None

    async def run(self, operation: Operation[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        for attempt in range(1, ATTEMPTS + 1):
            try:
                async with self.engine.begin() as connection:
                    return await connection.run_sync(operation, *args, **kwargs)
            except SQLAlchemyError as exc:
                if attempt == ATTEMPTS or not _retried(exc):
                    raise _unavailable(exc) from exc
        raise AssertionError("unreachable")

    async def write(self, operation: Operation[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        if self._writers is None:
            return await self.run(operation, *args, **kwargs)
        async with self._writers:
            return await self.run(operation, *args, **kwargs)

    async def close(self) -> None:
        await self.engine.dispose()


def dialect_insert(connection: Connection, table: Table) -> Any:
    """An INSERT that knows ON CONFLICT, for the store's dialect (SQLite or PostgreSQL)."""
    insert = sqlite_insert if connection.dialect.name == "sqlite" else postgresql_insert
    return insert(table)


def upsert(
    connection: Connection,
    table: Table,
    values: dict[str, Any],
    key: Sequence[str],
    update: dict[str, Any],
    *,
    where: Any = None,
) -> None:
    """INSERT `values`, or on a conflict over `key` UPDATE with `update` — only where `where`
    holds for the existing row, when given (SQLite and PostgreSQL)."""
    statement = dialect_insert(connection, table).values(**values)
    connection.execute(
        statement.on_conflict_do_update(index_elements=list(key), set_=update, where=where)
    )


def as_struct(row: Row[Any], struct: type[S], *, strict: bool = True) -> S:
    """A row as a struct, field by column name; a field the select left out takes its default.

    Converted from the row's mapping, not its attributes: msgspec 0.23 no longer falls back to a
    field's default when attribute lookup on a `Row` misses (it raises TypeError).
    """
    return msgspec.convert(row._mapping, struct, strict=strict)
