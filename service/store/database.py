"""`Store` (synchronous: the worker) and `AsyncStore` (async: API, DLQ consumer) run operations.

An operation is a plain function whose first argument is a SQLAlchemy Connection; it runs in one
transaction. AsyncStore runs the same function on the synchronous engine in a thread of its own
pool, so each query is written once and the event loop never waits on it (short reads on SQLite,
which never wait for a lock, are made in the loop's thread: `AsyncStore.read`). (The async drivers
were the other way: through aiosqlite and SQLAlchemy's greenlet bridge a statement cost ~1.4 ms of
CPU against ~0.25 ms on the synchronous engine — measured by `python -m bench --profile`.)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Concatenate, Generic, NamedTuple, ParamSpec, TypeVar

import msgspec
from loguru import logger
from sqlalchemy import (
    ARRAY,
    JSON,
    ColumnElement,
    Connection,
    Engine,
    Executable,
    Row,
    Select,
    String,
    Table,
    any_,
    bindparam,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
    StatementError,
)

from service.errors import DatabaseError, StoreRejected, StoreUnavailable
from service.store.engine import is_sqlite, json_text, sync_engine
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


def _stale(exc: SQLAlchemyError) -> bool:
    """The connection was found dead: the pool has been emptied, a new one will do."""
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def _stale_or_retried(exc: SQLAlchemyError) -> bool:
    return _stale(exc) or _retried(exc)


def _unavailable(exc: SQLAlchemyError) -> DatabaseError:
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    if _unreachable(exc):
        return StoreUnavailable(f"the store is unavailable: {reason}")
    if isinstance(exc, DataError):
        return StoreRejected(f"the store refused a value: {reason}")
    return DatabaseError(f"the store failed: {reason}")


def _called(
    operation: Operation[P, R], connection: Connection, *args: P.args, **kwargs: P.kwargs
) -> R:
    """`operation`'s result. A StopIteration it lets out (`next()` of an empty result) is a
    RuntimeError here, as it would be out of a generator: an asyncio future cannot hold a
    StopIteration, and the caller of an AsyncStore awaiting one would wait for ever."""
    try:
        return operation(connection, *args, **kwargs)
    except StopIteration as exc:
        name = getattr(operation, "__qualname__", None) or repr(operation)
        raise RuntimeError(f"{name} raised StopIteration") from exc


class Store:
    """The store through a synchronous engine; one per process (engines do not survive fork)."""

    def __init__(self, url: str, *, pool_size: int = 5) -> None:
        self.url = url
        self.engine = sync_engine(url, pool_size=pool_size)
        # PostgreSQL: connections of their own for `read` (none is opened before one is used).
        self._reads = (
            None if is_sqlite(url) else sync_engine(url, pool_size=pool_size, autocommit=True)
        )

    def run(self, operation: Operation[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        for attempt in range(1, ATTEMPTS + 1):
            try:
                with self.engine.begin() as connection:
                    return _called(operation, connection, *args, **kwargs)
            except SQLAlchemyError as exc:
                if attempt == ATTEMPTS or not _retried(exc):
                    raise _unavailable(exc) from exc
        raise AssertionError("unreachable")

    def read(self, operation: Operation[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """`run` for an operation that only reads, in one statement — or in several that need
        not see one snapshot, as PostgreSQL's READ COMMITTED gives each statement its own anyway.

        On PostgreSQL it runs on a connection in autocommit that is not pinged first: one round
        trip where `run` makes four (the pool's ping, BEGIN, the statement, COMMIT) — a third
        less API CPU per status read (`python -m bench status --database-url …`). A connection
        found dead (PostgreSQL restarted since it was pooled) is what the ping would have caught:
        the pool is then emptied and the read made again on a new one, as a read always can be.
        Not for the search, whose statement timeout (SET LOCAL) needs a transaction. SQLite:
        `run`.
        """
        if self._reads is None:
            return self.run(operation, *args, **kwargs)
        return self._autocommit(_stale, operation, *args, **kwargs)

    def run_alone(self, operation: Operation[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """`run` for an operation that writes in a single statement on PostgreSQL — atomic on its
        own, however many tables its CTEs change — and that may be sent twice with the outcome
        of once (each CTE changes only what is not changed yet).

        On PostgreSQL it goes, like `read`, on a connection in autocommit, not pinged: one
        round trip where `run` makes four (ping, BEGIN, statement, COMMIT). A worker's document
        task is two such writes (its start with the load, its outcome with the text); the first
        took 1.2-1.3 → 0.55-0.6 ms of wall time and 0.6-0.8 → 0.23 ms of CPU on 2 cores (400 in
        turns with the transaction, in-process). When the connection is found dead the
        statement is sent again on a new one: it had not been sent, or it rolled back with its
        connection, or — its answer lost on the way — it committed, and the second changes
        nothing. A deadlock or serialization failure is tried again as by `run`. On SQLite the
        operation makes its statements in a transaction (`run`): in-process, they cost no round
        trip.
        """
        if self._reads is None:
            return self.run(operation, *args, **kwargs)
        return self._autocommit(_stale_or_retried, operation, *args, **kwargs)

    def _autocommit(
        self,
        again: Callable[[SQLAlchemyError], bool],
        operation: Operation[P, R],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> R:
        assert self._reads is not None
        for attempt in range(1, ATTEMPTS + 1):
            try:
                with self._reads.connect() as connection:
                    return _called(operation, connection, *args, **kwargs)
            except SQLAlchemyError as exc:
                if attempt == ATTEMPTS or not again(exc):
                    raise _unavailable(exc) from exc
        raise AssertionError("unreachable")

    def migrate(self) -> str:
        return upgrade(self.url)

    def close(self) -> None:
        self.engine.dispose()
        if self._reads is not None:
            self._reads.dispose()


RECORD_PATIENCE = 5.0
"""Seconds `AsyncStore.record` is usually given: long enough for a blip of the store, short
enough for a request or a shutdown to wait."""
READERS = 4
"""Threads (and connections) an AsyncStore reads on at once."""
LONG_READERS = 4
"""Threads (and connections) an AsyncStore runs long reads (searches) on at once."""
READ_BATCHES = 2
"""Batches of `AsyncStore.read` under way at once; reads arriving meanwhile wait for the next."""
READ_BATCH = 32
"""Reads a batch holds at most: the last of them waits for the others (~0.2 ms each)."""

LOOKUP_BATCH = 100
"""Keys one call of a lookup operation is given at most (`AsyncStore.lookup`)."""

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
Lookup = Callable[[Connection, list[K]], Mapping[K, V]]
"""Looks up many keys in one statement: the value of each key found, by key."""


class _Read:
    """A read waiting for its batch: run on a reader thread, its outcome delivered on the loop."""

    __slots__ = ("call", "future")

    def __init__(self, call: Callable[[], Any], future: asyncio.Future[Any]) -> None:
        self.call = call
        self.future = future

    def run(self) -> Any:
        return self.call()

    def deliver(self, value: Any, error: Exception | None) -> None:
        _settle(self.future, value, error)

    def abandon(self, error: Exception) -> None:
        _settle(self.future, None, error)


class _Lookups:
    """The lookups of one operation that wait for the same batch: one call for all their keys."""

    __slots__ = ("operation", "store", "waiting")

    def __init__(self, store: Store, operation: Lookup[Any, Any]) -> None:
        self.store = store
        self.operation = operation
        self.waiting: list[tuple[Any, asyncio.Future[Any]]] = []

    def run(self) -> Mapping[Any, Any]:
        keys = list(dict.fromkeys(key for key, _ in self.waiting))
        return self.store.read(self.operation, keys)

    def deliver(self, found: Mapping[Any, Any] | None, error: Exception | None) -> None:
        for key, future in self.waiting:
            _settle(future, None if found is None else found.get(key), error)

    def abandon(self, error: Exception) -> None:
        for _, future in self.waiting:
            _settle(future, None, error)


def _settle(future: asyncio.Future[Any], value: Any, error: Exception | None) -> None:
    if future.done():  # its caller stopped waiting
        return
    if error is None:
        future.set_result(value)
    else:
        future.set_exception(error)


_Entry = _Read | _Lookups
_Outcome = tuple[_Entry, Any, Exception | None]


class _Locked(Exception):
    """SQLite answered "database is locked" to a read that does not wait."""


class AsyncStore:
    """The store for code on an event loop: each operation runs on the synchronous engine in a
    thread, and the loop awaits it (but for `read` on SQLite: see there).

    `run` for reads, `write` for operations that write. On SQLite every write of the process goes
    through one writer thread, in turn, instead of fighting over the database's lock inside SQLite,
    whose busy handler sleeps in growing steps (that is what made concurrent uploads slow; the
    writers of different processes take turns on a file lock, `sqlite_turns`); reads
    run beside it (WAL). PostgreSQL takes concurrent writers as they come, on the same threads
    as the reads. `long_read` for a read that may take seconds (a search), on threads of its own.

    An awaiting task that is cancelled stops waiting, not the operation: its transaction commits
    or rolls back whole in its thread, as it would have.
    """

    def __init__(
        self, url: str, *, readers: int = READERS, long_readers: int = LONG_READERS
    ) -> None:
        self.url = url
        sqlite = is_sqlite(url)
        self._store = Store(url, pool_size=readers + long_readers + 1)
        self._readers = ThreadPoolExecutor(readers, thread_name_prefix="store-read")
        self._long_readers = ThreadPoolExecutor(long_readers, thread_name_prefix="store-long-read")
        self._writer = (
            ThreadPoolExecutor(1, thread_name_prefix="store-write") if sqlite else self._readers
        )
        self._pending: list[_Entry] = []
        self._open_lookups: dict[Lookup[Any, Any], _Lookups] = {}  # in _pending, taking keys
        self._batches = 0
        # SQLite: a connection for reads made in the loop's own thread, one that never waits
        # for a lock (`read`). None is opened before the first read.
        self._inline = sync_engine(url, pool_size=1, busy_timeout_ms=0) if sqlite else None
        self._inline_connection: Connection | None = None
        self._closed = False

    @property
    def engine(self) -> Engine:
        return self._store.engine

    async def run(self, operation: Operation[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        return await self._on(self._readers, operation, *args, **kwargs)

    async def _on(
        self,
        threads: ThreadPoolExecutor,
        operation: Operation[P, R],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> R:
        """`Store.run` on one of `threads`; StoreUnavailable once the store is closed (its
        threads take no more work), as for a read."""
        call = functools.partial(self._store.run, operation, *args, **kwargs)
        try:
            running = asyncio.get_running_loop().run_in_executor(threads, call)
        except RuntimeError:  # shut down
            raise StoreUnavailable("the store is closed") from None
        return await running

    async def read(self, operation: Operation[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """`run` for a short operation that only reads (`Store.read`: one round trip on
        PostgreSQL), such as a status read.

        Reads that arrive while `READ_BATCHES` batches are under way go together into the next:
        one hop to a reader thread and one back for all of them. A hop (waking a thread, then
        the event loop) costs about as much CPU as the read itself on a small machine (~100 µs
        each on two virtual cores): at 32 concurrent status reads the API's CPU per read fell by
        13 to 29 % on SQLite (`python -m bench status`). A read alone still goes at once.

        On SQLite the read is first made in the loop's own thread, on a connection that fails at
        once instead of waiting for a lock: such a read is a few dozen microseconds of CPU,
        which it holds the GIL for wherever it runs, while the hop to a thread and back, and
        the GIL passed between that thread and the loop at each SQLite call, cost twice what
        the read does. In WAL mode a read never waits for a writer; when SQLite does answer
        "locked" (a connection in exclusive locking mode, WAL recovery after a crash), the read
        goes to a reader thread, whose connection waits for the lock.
        """
        if self._inline is not None and not self._closed:
            try:
                return self._read_inline(operation, *args, **kwargs)
            except _Locked:
                pass  # to a reader thread, which waits for the lock as every store call does
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._pending.append(
            _Read(functools.partial(self._store.read, operation, *args, **kwargs), future)
        )
        return await self._waiting_for(loop, future)

    async def lookup(self, operation: Lookup[K, V], key: K) -> V | None:
        """`key`'s value as `operation` finds it (None when it does not), for a read of one row
        by key that many callers make at once (a task's status).

        `read`, but the lookups of one operation that go to a reader thread in the same batch
        are one call of it, given all their keys — one statement, not one each: on PostgreSQL
        a status read alone costs ~200 µs of the API's CPU, sixteen together ~25 µs each.
        """
        if self._inline is not None and not self._closed:
            try:
                return self._read_inline(operation, [key]).get(key)
            except _Locked:
                pass  # to a reader thread, as in `read`
        loop = asyncio.get_running_loop()
        future: asyncio.Future[V | None] = loop.create_future()
        group = self._open_lookups.get(operation)
        if group is None or len(group.waiting) >= LOOKUP_BATCH:
            group = self._open_lookups[operation] = _Lookups(self._store, operation)
            self._pending.append(group)
        group.waiting.append((key, future))
        return await self._waiting_for(loop, future)

    async def _waiting_for(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[R]) -> R:
        if self._batches < READ_BATCHES:
            self._next_batch(loop)
        return await future

    def _next_batch(self, loop: asyncio.AbstractEventLoop) -> None:
        batch, self._pending = self._pending[:READ_BATCH], self._pending[READ_BATCH:]
        for entry in batch:  # no more keys join a group on its way
            if isinstance(entry, _Lookups) and self._open_lookups.get(entry.operation) is entry:
                del self._open_lookups[entry.operation]
        try:
            self._readers.submit(self._read_batch, loop, batch)
        except RuntimeError:  # closed: no batch will start again, for these or those waiting
            waiting, self._pending = [*batch, *self._pending], []
            self._open_lookups.clear()
            for entry in waiting:
                entry.abandon(StoreUnavailable("the store is closed"))
            return
        self._batches += 1

    def _read_batch(self, loop: asyncio.AbstractEventLoop, batch: list[_Entry]) -> None:
        """On a reader thread: each read of the batch, then one call back to the loop — whatever
        a read raised: a batch not delivered would hold its callers, and its place among the
        `READ_BATCHES` under way, for ever."""
        outcomes: list[_Outcome] = []
        for entry in batch:
            try:
                outcomes.append((entry, entry.run(), None))
            except Exception as exc:  # each read's error goes to its own callers
                outcomes.append((entry, None, exc))
            except BaseException as exc:
                outcomes.append((entry, None, RuntimeError(f"the read raised {exc!r}")))
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            loop.call_soon_threadsafe(self._deliver, loop, outcomes)

    def _deliver(self, loop: asyncio.AbstractEventLoop, outcomes: list[_Outcome]) -> None:
        """On the loop: each read's outcome to its callers, and the next batch on its way."""
        self._batches -= 1
        try:
            for entry, value, error in outcomes:
                try:
                    entry.deliver(value, error)
                except Exception as exc:  # a lookup that returned no mapping
                    entry.abandon(exc)
        finally:
            if self._pending and self._batches < READ_BATCHES:
                self._next_batch(loop)

    def _read_inline(self, operation: Operation[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """`operation` on the loop's own connection, kept open between reads (taking one from
        a pool and giving it back made a status read half as costly again: ~75 against ~50 µs)."""
        assert self._inline is not None
        connection = self._inline_connection
        try:
            if connection is None:
                connection = self._inline_connection = self._inline.connect()
            with connection.begin():
                return _called(operation, connection, *args, **kwargs)
        except SQLAlchemyError as exc:
            if isinstance(exc, OperationalError) and "locked" in str(exc.orig):
                raise _Locked from exc
            # A connection that failed otherwise is not trusted again: the next read opens one.
            if connection is not None:
                self._inline_connection = None
                with contextlib.suppress(SQLAlchemyError):
                    connection.invalidate()
            raise _unavailable(exc) from exc

    async def long_read(self, operation: Operation[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """`run` on threads of its own, for a read that may take seconds (a search): however
        many are under way, the other operations (a status read, the commit of an upload) never
        wait for a thread behind them. Beyond `long_readers` at once, long reads queue."""
        return await self._on(self._long_readers, operation, *args, **kwargs)

    async def write(self, operation: Operation[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        return await self._on(self._writer, operation, *args, **kwargs)

    async def record(
        self, patience: float, operation: Operation[P, R], *args: P.args, **kwargs: P.kwargs
    ) -> R:
        """`write` for what records an action already taken — a message that went out. A write
        the store refuses for a transient reason is tried again, with growing pauses, for up to
        `patience` seconds: left unrecorded, the action would look undone, and be done again."""
        give_up = time.monotonic() + patience
        pause = 0.1
        while True:
            try:
                return await self.write(operation, *args, **kwargs)
            except DatabaseError as exc:
                if not exc.transient or self._closed or time.monotonic() + pause > give_up:
                    raise
                logger.warning("the store refused a record ({}); trying again", exc)
                await asyncio.sleep(pause)
                pause = min(2 * pause, 1.0)

    async def close(self) -> None:
        """Wait for the operations in flight, then close the connections."""
        self._closed = True
        await asyncio.to_thread(self._shutdown)

    def _shutdown(self) -> None:
        self._writer.shutdown(wait=True)
        self._readers.shutdown(wait=True)
        self._long_readers.shutdown(wait=True)
        self._store.close()
        if self._inline_connection is not None:
            self._inline_connection.close()
        if self._inline is not None:
            self._inline.dispose()


A = TypeVar("A")


class _ForDialect(Generic[A]):
    """A statement built once per dialect and reused: building a SQLAlchemy statement costs
    more CPU than running it. `build` gets what the dialect needs written its own way
    (`_argument`)."""

    def __init__(self, build: Callable[[A], Executable]) -> None:
        self._build = build
        self._built: dict[str, Executable] = {}

    def _argument(self, dialect: str) -> A:
        raise NotImplementedError

    def __call__(self, connection: Connection) -> Executable:
        return self.for_dialect(connection.dialect.name)

    def for_dialect(self, name: str) -> Executable:
        """The statement as dialect `name` runs it (for a statement that is built of others)."""
        built = self._built.get(name)
        if built is None:
            built = self._built[name] = self._build(self._argument(name))
        return built


class PerDialect(_ForDialect[Callable[[Table], Any]]):
    """A statement written differently for SQLite and PostgreSQL, an upsert: `build` gets the
    dialect's INSERT (one that knows ON CONFLICT); values come as parameters at execution."""

    def _argument(self, dialect: str) -> Callable[[Table], Any]:
        return sqlite_insert if dialect == "sqlite" else postgresql_insert


class ByDialectName(_ForDialect[str]):
    """A statement written its own way for each dialect: `build` gets the dialect's name."""

    def _argument(self, dialect: str) -> str:
        return dialect


OneOf = Callable[[ColumnElement[Any], str], ColumnElement[bool]]


def _one_of(dialect: str) -> OneOf:
    def one_of(column: ColumnElement[Any], name: str) -> ColumnElement[bool]:
        if dialect == "postgresql":
            # VARCHAR[] without a length: a cast to the column's VARCHAR(255)[] would cut a
            # longer key to 255 characters, and so find another key's row.
            return column == any_(bindparam(name, type_=ARRAY(String())))
        return column.in_(bindparam(name, expanding=True))

    return one_of


class Keyed(_ForDialect[OneOf]):
    """A statement that finds rows by a list of text keys, given at execution as one parameter.
    `build` gets `one_of(column, name)`, the condition that `column` equals one of the list bound
    as `name`.

    On SQLite that is `IN (?, ?, …)`. On PostgreSQL it is `= ANY(:name)`, one array: an IN list
    is a parameter per key and a statement text per length of list, and once psycopg has
    prepared it, PostgreSQL's generic plan could scan the table comparing each row with each
    key — 100 ms for 250 keys in 15,000 runs not yet analysed. A generic plan of `= ANY` of one
    array is an index lookup per key. (Before autovacuum has analysed a young table, a
    connection's first custom plans may still scan it, hashing the keys: ~2 ms at 15,000 runs.)
    """

    def _argument(self, dialect: str) -> OneOf:
        return _one_of(dialect)


class Bulk:
    """A statement run for many rows at once, each row a tuple of `columns`' values: compiled once
    per dialect and handed to the driver (SQLite's executemany; on PostgreSQL one statement of
    arrays, below), each value converted as its column's type converts it, JSON encoded by
    msgspec.

    For the writes of hundreds of rows a transaction (the DLQ consumer's batches), where
    SQLAlchemy's executemany costs more than the database: it builds a dict of every parameter of
    every row, looks each one's conversion up again, converts the same timestamp anew for every
    row, and encodes JSON with the json module. Here values are converted a column at a time, a
    value the same object as the row before's is not converted again, and a value JSON gets is
    one msgspec encodes (the documents json writes, whitespace apart). `build` is PerDialect's; a
    bound value of the statement that is not a column of the rows (a constant in its ON CONFLICT
    clause) is converted once.

    On PostgreSQL an INSERT of one row of parameters becomes one statement for all the rows, each
    column's values one array (`INSERT … SELECT * FROM unnest(…)`), sent in binary: psycopg's
    executemany sent one statement a row, each parsed, planned and run by the server and its
    parameters dumped by psycopg again (a 250-letter batch of the DLQ consumer: 134-156 → 92-101
    µs of CPU a record, offline). As in any one statement, ON CONFLICT DO UPDATE may not meet a
    row twice: the rows of such a statement must not repeat its conflict key."""

    def __init__(
        self, build: Callable[[Callable[[Table], Any]], Executable], columns: Sequence[str]
    ) -> None:
        self._statement = PerDialect(build)
        self.columns = tuple(columns)
        self._prepared: dict[str, _Prepared] = {}

    def execute(self, connection: Connection, rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        sql, plan, names, form = self._prepared.get(connection.dialect.name) or self._prepare(
            connection
        )
        given = list(zip(*rows, strict=True))
        try:
            parameters = [
                _converted(given[index], convert) if index >= 0 else [constant] * len(rows)
                for index, convert, constant in plan
            ]
        except Exception as exc:
            # As SQLAlchemy reports a value its type cannot convert: a statement that failed.
            raise StatementError(f"({type(exc).__name__}) {exc}", sql, None, exc) from exc
        if names is None:  # positional (SQLite)
            connection.exec_driver_sql(sql, list(zip(*parameters, strict=True)))
            return
        if form is None:  # named (psycopg), a statement not of one VALUES row
            connection.exec_driver_sql(
                sql, [dict(zip(names, row, strict=True)) for row in zip(*parameters, strict=True)]
            )
            return
        # PostgreSQL: one array a column, unnested by one statement (the class's docstring).
        values = [list(parameters[index]) for index in form.in_row]
        values += [parameters[index][0] for index in form.in_tail]
        connection.exec_driver_sql(form.sql, tuple(values))

    def _prepare(self, connection: Connection) -> _Prepared:
        dialect = connection.dialect
        statement: Any = self._statement(connection)
        compiled = statement.compile(dialect=dialect, column_keys=list(self.columns))
        order, binds = _parameters(compiled)
        unset = [c.key for c in compiled.insert_prefetch if c.key not in self.columns]
        if unset or compiled.post_compile_params:
            raise ValueError(f"a bulk statement needs every value of its rows given: {unset}")
        plan: list[tuple[int, Any, Any]] = []
        for name in order:
            bind = binds[name]
            if isinstance(bind.type, JSON):
                convert: Any = _json_or_null if bind.type.none_as_null else json_text
            else:
                convert = bind.type._cached_bind_processor(dialect)
            if name in self.columns:
                plan.append((self.columns.index(name), convert, None))
            elif bind.required:
                raise ValueError(f"a bulk statement's parameter {name} has no value")
            else:
                value = bind.effective_value
                plan.append((-1, None, value if convert is None else convert(value)))
        if compiled.positional:
            prepared: _Prepared = (compiled.string, plan, None, None)
        else:
            types = {name: binds[name].type.compile(dialect=dialect) for name in order}
            form = _rows_form(compiled.string, order, types)
            prepared = (compiled.string, plan, tuple(order), form)
        self._prepared[dialect.name] = prepared
        return prepared


_NAMED = re.compile(r"%\((\w+)\)s")
_ROW = re.compile(r" VALUES \(((?:%\(\w+\)s(?:::[A-Z ]+)?(?:, )?)+)\)")
"""The one row of an INSERT: each value a parameter, cast or not."""
_CAST = re.compile(r"%\((\w+)\)s(?:::([A-Z ]+))?")
_LENGTH = re.compile(r"\(\d+\)")


class _Rows(NamedTuple):
    """An INSERT of one VALUES row of parameters as the INSERT of many: each column's values as
    an array, unnested (positional, %s); the parameters each array takes and those of the rest
    of the statement, by their place in the plan."""

    sql: str
    in_row: tuple[int, ...]
    in_tail: tuple[int, ...]


_Prepared = tuple[str, list[tuple[int, Any, Any]], tuple[str, ...] | None, _Rows | None]
"""A bulk statement for one dialect: its SQL; for each parameter, the column it takes (-1 for a
constant), the conversion and the constant; the parameters' names (None when positional); its
many-row form (PostgreSQL, an INSERT of one row of parameters)."""


def _rows_form(sql: str, order: Sequence[str], types: Mapping[str, str]) -> _Rows | None:
    """`sql`'s many-row form, or None when it is not an INSERT of one row of parameters."""
    values = _ROW.search(sql)
    if not sql.startswith("INSERT ") or values is None or _NAMED.search(sql, 0, values.start()):
        return None
    # Each array cast to its value's cast in the row (no length: a text too long for its column
    # is refused by the INSERT, as before, not cut by the cast), else to its column's type.
    cast = _CAST.findall(values[1])
    names = [name for name, _ in cast]
    arrays = ", ".join(f"%b::{given or _LENGTH.sub('', types[name])}[]" for name, given in cast)
    tail = sql[values.end() :]
    place = {name: index for index, name in enumerate(order)}
    return _Rows(
        f"{sql[: values.start()]} SELECT * FROM unnest({arrays}){_NAMED.sub('%s', tail)}",  # noqa: S608  # no value in the text: the statement's own columns and types
        tuple(place[name] for name in names),
        tuple(place[name] for name in _NAMED.findall(tail)),
    )


def _converted(values: Sequence[Any], convert: Callable[[Any], Any] | None) -> Sequence[Any]:
    if convert is None:
        return values
    converted = []
    last: Any = _converted
    for value in values:
        if value is not last:
            last, result = value, convert(value)
        converted.append(result)
    return converted


def _json_or_null(value: Any) -> str | None:
    return None if value is None else json_text(value)


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

    Converted from a dict of the row's columns, not from its attributes: msgspec 0.23 no longer
    falls back to a field's default when attribute lookup on a `Row` misses (it raises
    TypeError). Nor from the row's mapping, which msgspec reads a field at a time through
    Python's Mapping protocol: a dead letter's 34 columns took 20 µs that way, 6 µs as a dict.
    """
    columns = dict(zip(_plain(row._fields), row, strict=True))
    return msgspec.convert(columns, struct, strict=strict)


def _parameters(compiled: Any) -> tuple[list[str], dict[str, Any]]:
    """A compiled statement's parameter names, in the order a positional driver takes them
    (each once for a named one), and each name's bound parameter."""
    binds = {name: bind for bind, name in compiled.bind_names.items()}
    order = list(compiled.positiontup or ()) if compiled.positional else list(binds)
    return order, binds


class _Fetching(NamedTuple):
    """A Fetch as one dialect runs it: its SQL, and each parameter's name and conversion in the
    SQL's order; no SQL for a statement SQLAlchemy must run (an expanding IN)."""

    statement: Select[Any]
    sql: str | None
    parameters: list[tuple[str, Any]]
    positional: bool


class Fetch(Generic[S]):
    """A SELECT whose rows become `struct`s, run on the driver's own cursor: compiled once per
    dialect, each parameter and column converted as its type converts it. `statement` is one
    SELECT, or one written per dialect (`Keyed`, `ByDialectName`).

    For the reads made at every request (a task's status): SQLAlchemy's `execute` of a compiled
    statement — the cache lookup, the execution context, the result and its rows — took ~70 µs
    of the ~100 a status read cost on SQLite, the driver ~30. The driver's errors are raised as
    SQLAlchemy's execute raises them (its classes, the connection invalidated when it was lost).
    What it gives up: SQLAlchemy's events do not see the statement (no OpenTelemetry span for
    it). A statement with an expanding IN (SQLite's `Keyed`: a statement text per length of
    list) is left to SQLAlchemy.
    """

    def __init__(self, statement: Select[Any] | _ForDialect[Any], struct: type[S]) -> None:
        self._statement = statement
        self._struct = struct
        self._prepared: dict[str, _Fetching] = {}
        self._columns: dict[str, list[tuple[str, Any]]] = {}

    def first(self, connection: Connection, **parameters: Any) -> S | None:
        found = self.all(connection, **parameters)
        return found[0] if found else None

    def all(self, connection: Connection, **parameters: Any) -> list[S]:
        prepared = self._prepared.get(connection.dialect.name) or self._prepare(connection)
        if prepared.sql is None:
            result = connection.execute(prepared.statement, parameters)
            return [as_struct(row, self._struct, strict=False) for row in result]
        values = [
            parameters[name] if convert is None else convert(parameters[name])
            for name, convert in prepared.parameters
        ]
        dialect = connection.dialect
        given: Any = values
        if not prepared.positional:
            given = dict(zip((name for name, _ in prepared.parameters), values, strict=True))
        driver = connection.connection.dbapi_connection
        assert driver is not None  # an open connection's
        cursor = driver.cursor()
        try:
            cursor.execute(prepared.sql, given)
            rows = cursor.fetchall()
            columns = self._columns.get(dialect.name) or self._convert(
                dialect, prepared.statement, cursor.description
            )
        except dialect.loaded_dbapi.Error as exc:
            # As SQLAlchemy's own execute says it: the store's callers tell a lock, a lost
            # connection or a refused statement apart by SQLAlchemy's classes.
            gone = dialect.is_disconnect(exc, driver, cursor)
            if gone:
                connection.invalidate(exc)
            raise DBAPIError.instance(
                prepared.sql,
                given,
                exc,
                dialect.loaded_dbapi.Error,
                connection_invalidated=gone,
                dialect=dialect,
            ) from exc
        finally:
            cursor.close()
        return [
            msgspec.convert(
                {
                    name: value if convert is None else convert(value)
                    for (name, convert), value in zip(columns, row, strict=True)
                },
                self._struct,
                strict=False,
            )
            for row in rows
        ]

    def _prepare(self, connection: Connection) -> _Fetching:
        dialect = connection.dialect
        statement: Any = self._statement
        if isinstance(statement, _ForDialect):
            statement = statement.for_dialect(dialect.name)
        compiled: Any = statement.compile(dialect=dialect)
        if compiled.post_compile_params:
            prepared = _Fetching(statement, None, [], False)
        else:
            order, binds = _parameters(compiled)
            parameters = [
                (name, binds[name].type._cached_bind_processor(dialect)) for name in order
            ]
            prepared = _Fetching(statement, compiled.string, parameters, compiled.positional)
        self._prepared[dialect.name] = prepared
        return prepared

    def _convert(
        self, dialect: Dialect, statement: Select[Any], description: Sequence[Any]
    ) -> list[tuple[str, Any]]:
        """Each column's name and conversion: some depend on the type the driver says the
        column has (PostgreSQL's numerics), as SQLAlchemy's own results do."""
        columns = [
            (str(column.key), column.type._cached_result_processor(dialect, found[1]))
            for column, found in zip(statement.selected_columns, description, strict=True)
        ]
        self._columns[dialect.name] = columns
        return columns


@functools.lru_cache(maxsize=1024)
def _plain(names: tuple[str, ...]) -> tuple[str, ...]:
    """Column names as plain `str`: SQLAlchemy's are a subclass (`quoted_name`), which msgspec
    refuses as a dict key."""
    return tuple(map(str, names))
