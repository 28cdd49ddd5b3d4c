"""`Store.read`: the API's plain reads — on PostgreSQL in autocommit, without the pool's ping."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, text
from sqlalchemy.exc import OperationalError

from service.errors import StoreUnavailable
from service.store import task_runs
from service.store.database import LONG_READERS, READ_BATCHES, AsyncStore, Store
from service.store.engine import sync_engine
from service.task_contract import PROCESS_DOCUMENT
from service.topology import DOCUMENT_QUEUE
from tests.support import eventually


def _backend_pid(connection: Connection) -> int:
    return int(connection.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _in_transaction(connection: Connection) -> bool:
    # now() is the start of the transaction: two statements in one block see the same now(),
    # in autocommit each is its own transaction and sees its own.
    first = connection.execute(text("SELECT now()")).scalar_one()
    connection.execute(text("SELECT pg_sleep(0.01)"))
    second = connection.execute(text("SELECT now()")).scalar_one()
    return bool(first == second)


async def batches_held(store: AsyncStore) -> tuple[list[asyncio.Task[str]], threading.Event]:
    """Reads that take the `READ_BATCHES` batches a store runs at once, each holding its reader
    thread until the event is set (then answering "held"): reads made meanwhile queue."""
    began, release = threading.Semaphore(0), threading.Event()

    def held(_: Connection) -> str:
        began.release()
        release.wait(60)
        return "held"

    first = [asyncio.create_task(store.read(held)) for _ in range(READ_BATCHES)]
    for _ in range(READ_BATCHES):
        assert await asyncio.to_thread(began.acquire, True, 10)
    return first, release


async def test_a_read_sees_what_was_written(async_store: AsyncStore) -> None:
    await async_store.write(task_runs.record_pending, "t-1", PROCESS_DOCUMENT, queue=DOCUMENT_QUEUE)
    run = await async_store.read(task_runs.get, "t-1")
    assert run is not None
    assert run.state == "PENDING"
    assert await async_store.read(task_runs.get, "t-unknown") is None
    looked_up = await async_store.lookup(task_runs.by_id, "t-1")
    assert looked_up is not None
    assert looked_up.task_id == "t-1"
    assert await async_store.lookup(task_runs.by_id, "t-unknown") is None
    assert [r.task_id for r in await async_store.read(task_runs.get_many, ["t-1", "t-2"])] == [
        "t-1"
    ]


@pytest.mark.postgres
def test_on_postgresql_a_read_opens_no_transaction_and_run_does(postgres_url: str) -> None:
    store = Store(postgres_url)
    try:
        assert not store.read(_in_transaction)
        assert store.run(_in_transaction)
    finally:
        store.close()


@pytest.mark.postgres
def test_a_pooled_connection_that_died_is_replaced_and_the_read_made_again(
    postgres_url: str,
) -> None:
    """What the pool's ping did for `run`: a PostgreSQL restart kills every pooled connection."""
    store, other = Store(postgres_url, pool_size=2), Store(postgres_url)
    try:
        pid = store.read(_backend_pid)  # pooled now
        assert other.run(
            lambda c: c.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()
        )
        assert store.read(_backend_pid) != pid
    finally:
        store.close()
        other.close()


@pytest.mark.postgres
def test_a_read_with_postgresql_gone_says_unavailable(postgres_url: str) -> None:
    store = Store(postgres_url.replace(":5432/", ":1/"))
    try:
        with pytest.raises(StoreUnavailable, match="the store is unavailable"):
            store.read(_backend_pid)
    finally:
        store.close()


async def test_searches_under_way_hold_up_no_other_operation(async_store: AsyncStore) -> None:
    """However many long reads run (a search may take its whole 5 s), a write, a read and a
    plain operation each find a thread of their own."""
    began, release = threading.Semaphore(0), threading.Event()

    def long(_: Connection) -> str:
        began.release()
        release.wait(60)
        return "done"

    longs = [asyncio.ensure_future(async_store.long_read(long)) for _ in range(LONG_READERS + 2)]
    try:
        for _ in range(LONG_READERS):
            assert await asyncio.to_thread(began.acquire, True, 10)
        await asyncio.wait_for(
            async_store.write(
                task_runs.record_pending, "t-1", PROCESS_DOCUMENT, queue=DOCUMENT_QUEUE
            ),
            10,
        )
        assert await asyncio.wait_for(async_store.read(task_runs.get, "t-1"), 10) is not None
        assert await asyncio.wait_for(async_store.run(task_runs.get, "t-1"), 10) is not None
        assert not any(task.done() for task in longs)
    finally:
        release.set()
    assert await asyncio.gather(*longs) == ["done"] * (LONG_READERS + 2)


async def test_reads_that_arrive_while_batches_run_go_together_each_to_its_caller(
    async_store: AsyncStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One hop to a reader thread for many reads; each caller gets its own answer or error, and
    one that stopped waiting leaves the others theirs. (On SQLite, the path of reads that found
    the database locked: see the tests below.)"""
    monkeypatch.setattr(async_store, "_inline", None)
    hops: list[int] = []
    submit = async_store._readers.submit

    def counted(*args: Any, **kwargs: Any) -> Any:
        hops.append(len(args[-1]) if len(args) == 3 else 0)  # (function, loop, batch)
        return submit(*args, **kwargs)

    monkeypatch.setattr(async_store._readers, "submit", counted)

    def echo(_: Connection, value: int) -> int:
        if value == 13:
            raise ValueError("thirteen")
        return value

    first, release = await batches_held(async_store)
    waiting = {value: asyncio.ensure_future(async_store.read(echo, value)) for value in range(20)}
    gone = asyncio.ensure_future(async_store.read(echo, 99))
    await asyncio.sleep(0)  # the reads are queued (no hop can take them: both batches are held)
    gone.cancel()
    release.set()
    assert await asyncio.gather(*first) == ["held"] * READ_BATCHES
    for value, read in waiting.items():
        if value == 13:
            with pytest.raises(ValueError, match="thirteen"):
                await read
        else:
            assert await read == value
    assert gone.cancelled()
    assert hops == [1] * READ_BATCHES + [21]


async def test_lookups_that_wait_for_the_same_batch_are_one_call_with_all_their_keys(
    async_store: AsyncStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twenty status reads waiting together are one statement; each caller gets its own run (or
    None), a key asked twice is looked up once, and a lookup whose caller stopped waiting leaves
    the others theirs. A failing call fails each of its lookups, and nothing else."""
    monkeypatch.setattr(async_store, "_inline", None)  # on SQLite, the path of a locked database
    for n in range(20):
        await async_store.write(
            task_runs.record_pending, f"t-{n}", PROCESS_DOCUMENT, queue=DOCUMENT_QUEUE
        )
    calls: list[list[str]] = []

    def recorded(connection: Connection, task_ids: list[str]) -> dict[str, task_runs.TaskRun]:
        calls.append(task_ids)
        return task_runs.by_id(connection, task_ids)

    def failing(_: Connection, task_ids: list[str]) -> dict[str, int]:
        raise ValueError(f"failed for {len(task_ids)}")

    first, release = await batches_held(async_store)
    keys = [f"t-{n}" for n in range(20)] + ["t-3", "t-unknown"]
    looked_up = [asyncio.ensure_future(async_store.lookup(recorded, key)) for key in keys]
    doomed = [asyncio.ensure_future(async_store.lookup(failing, key)) for key in ("a", "b")]
    plain = asyncio.ensure_future(async_store.read(task_runs.get, "t-7"))
    gone = asyncio.ensure_future(async_store.lookup(recorded, "t-8"))
    await asyncio.sleep(0)  # all queued: both batches are held
    gone.cancel()
    release.set()
    assert await asyncio.gather(*first) == ["held"] * READ_BATCHES
    runs = await asyncio.gather(*looked_up)
    assert [run.task_id if run else None for run in runs] == [*keys[:-1], None]
    assert calls == [[*(f"t-{n}" for n in range(20)), "t-unknown"]]
    for lookup in doomed:
        with pytest.raises(ValueError, match="failed for 2"):
            await lookup
    run = await plain
    assert run is not None
    assert run.task_id == "t-7"
    assert gone.cancelled()


async def test_a_read_after_the_store_closed_says_so(database_url: str) -> None:
    store = AsyncStore(database_url)
    await store.close()
    with pytest.raises(StoreUnavailable, match="closed"):
        await store.read(task_runs.get, "t-1")


def _sqlite_store(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'docproc.db'}"
    store = Store(url)
    store.migrate()
    store.run(task_runs.record_pending, "t-1", PROCESS_DOCUMENT, queue=DOCUMENT_QUEUE)
    store.close()
    return url


async def test_on_sqlite_a_read_is_made_in_the_loops_own_thread(tmp_path: Path) -> None:
    """No hop to a thread and back, which cost twice what a status read does."""
    store = AsyncStore(_sqlite_store(tmp_path))
    try:
        seen = await store.read(lambda _: threading.get_ident())
        assert seen == threading.get_ident()
        run = await store.read(task_runs.get, "t-1")
        assert run is not None
        assert run.state == "PENDING"
    finally:
        await store.close()


async def test_on_sqlite_a_read_that_finds_the_database_locked_waits_off_the_loop(
    tmp_path: Path,
) -> None:
    """A connection in exclusive locking mode keeps every other one out, even in WAL mode: the
    read goes to a reader thread, which waits for the lock, and the loop runs on meanwhile."""
    url = _sqlite_store(tmp_path)
    holder = sqlite3.connect(tmp_path / "docproc.db", isolation_level=None)
    holder.execute("PRAGMA locking_mode = EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("UPDATE task_runs SET retries = 7")
    store = AsyncStore(url)
    try:
        read = asyncio.ensure_future(store.read(task_runs.get, "t-1"))

        async def in_a_reader_thread() -> bool | None:
            return True if store._batches == 1 else None

        # Polled on the loop, which is free: the read waits for the lock in a reader thread.
        await eventually(in_a_reader_thread, 10, "the read handed to a reader thread", 0.01)
        assert not read.done()
        holder.execute("COMMIT")
        holder.close()
        run = await asyncio.wait_for(read, 10)
        assert run is not None
        assert run.retries == 7  # what the holder committed, read once it let go
        # Later reads are made in the loop's thread again.
        assert await store.read(lambda _: threading.get_ident()) == threading.get_ident()
    finally:
        holder.close()
        await store.close()


@pytest.mark.postgres
def test_a_read_on_the_drivers_cursor_whose_connection_dies_is_said_as_sqlalchemy_says_it(
    postgres_url: str,
) -> None:
    """`task_runs.get` runs on the DBAPI cursor (`Fetch`): a connection lost under it is still
    SQLAlchemy's invalidated connection — which `read` makes again on a new one and `run` says
    is unavailable — never a driver's error the store's callers do not know."""
    store, other = Store(postgres_url), Store(postgres_url)
    store.migrate()
    task_id = f"t-{uuid.uuid4()}"
    raised: list[BaseException] = []

    def dies_once(connection: Connection) -> task_runs.TaskRun | None:
        if not raised:
            pid = _backend_pid(connection)
            other.run(lambda c: c.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid}))
            try:
                task_runs.get(connection, task_id)
            except BaseException as exc:
                raised.append(exc)
                raise
        return task_runs.get(connection, task_id)

    try:
        store.run(task_runs.record_pending, task_id, PROCESS_DOCUMENT, queue=DOCUMENT_QUEUE)
        assert store.read(dies_once) is not None, "made again on another connection"
        [lost] = raised
        assert isinstance(lost, OperationalError)
        assert lost.connection_invalidated
        raised.clear()
        with pytest.raises(StoreUnavailable, match="the store is unavailable"):
            store.run(dies_once)
        assert isinstance(raised[0], OperationalError)
    finally:
        store.close()
        other.close()


class Fatal(BaseException):
    """What no operation should raise, and a store must survive all the same."""


async def test_a_read_that_lets_out_stop_iteration_or_a_base_exception_fails_alone(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read whose operation lets out StopIteration (`next()` of an empty result), a
    BaseException, or a lookup that answers with no mapping, fails its own callers; the others
    of its batch get their answers, and the reads after it go on. (A future cannot hold a
    StopIteration: before, its batch's other callers, and every read after two such batches,
    waited for ever.)"""
    store = AsyncStore(database_url)
    monkeypatch.setattr(store, "_inline", None)  # on SQLite, the path of a locked database
    await store.write(task_runs.record_pending, "t-1", PROCESS_DOCUMENT, queue=DOCUMENT_QUEUE)

    def empty_first(_: Connection) -> int:
        return next(iter([]))

    def fatal(_: Connection) -> int:
        raise Fatal("an operation's BaseException")

    def no_mapping(_: Connection, keys: list[str]) -> Any:
        return list(keys)

    def echo(_: Connection, value: int) -> int:
        return value

    try:
        for _ in range(READ_BATCHES + 1):
            reads = [
                store.read(echo, 1),
                store.read(empty_first),
                store.read(fatal),
                store.lookup(no_mapping, "k"),
                store.read(echo, 2),
            ]
            outcomes = await asyncio.wait_for(asyncio.gather(*reads, return_exceptions=True), 10)
            assert outcomes[0] == 1
            assert outcomes[4] == 2
            assert isinstance(outcomes[1], RuntimeError)
            assert "StopIteration" in str(outcomes[1])
            assert isinstance(outcomes[2], RuntimeError)
            assert "Fatal" in str(outcomes[2])
            assert isinstance(outcomes[3], AttributeError)
        run = await asyncio.wait_for(store.lookup(task_runs.by_id, "t-1"), 10)
        assert run is not None
        for way in (store.run, store.write, store.long_read):
            with pytest.raises(RuntimeError, match="StopIteration"):
                await asyncio.wait_for(way(empty_first), 10)
    finally:
        await store.close()


async def test_closing_the_store_answers_every_read_still_waiting(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reads queued behind batches under way when the store closes are each answered — their
    result, or StoreUnavailable — however many wait (before, those beyond the next batch
    waited for ever)."""
    store = AsyncStore(database_url)
    monkeypatch.setattr(store, "_inline", None)

    def echo(_: Connection, value: int) -> int:
        return value

    first, release = await batches_held(store)
    waiting = [asyncio.ensure_future(store.read(echo, n)) for n in range(70)]
    closing = asyncio.ensure_future(store.close())

    async def closed() -> bool | None:
        return True if store._closed else None

    await eventually(closed, 10, "the store closing")
    release.set()
    await asyncio.wait_for(closing, 10)
    assert await asyncio.gather(*first) == ["held"] * READ_BATCHES
    outcomes = await asyncio.wait_for(asyncio.gather(*waiting, return_exceptions=True), 10)
    for n, outcome in enumerate(outcomes):
        assert outcome == n or isinstance(outcome, StoreUnavailable), outcome


async def test_after_the_store_closed_every_operation_says_it_is_unavailable(
    database_url: str,
) -> None:
    """StoreUnavailable (a 503), as for a read — not the thread pool's RuntimeError (a 500) —
    and at once: a record is not tried again against a closed store."""
    store = AsyncStore(database_url)
    await store.close()
    for way in (store.run, store.write, store.long_read):
        with pytest.raises(StoreUnavailable, match="closed"):
            await way(task_runs.get, "t-1")
    with pytest.raises(StoreUnavailable, match="closed"):
        await asyncio.wait_for(store.record(60, task_runs.get, "t-1"), 5)


def test_on_sqlite_a_commit_is_on_disk_before_it_returns(tmp_path: Path) -> None:
    """synchronous=FULL on every connection: an upload's 202 and a task's ack follow a commit,
    which in WAL mode with NORMAL a power loss could still take back."""
    url = _sqlite_store(tmp_path)
    store = Store(url)
    inline = sync_engine(url, pool_size=1, busy_timeout_ms=0)  # the API's reads in its loop
    try:
        for engine in (store.engine, inline):
            with engine.connect() as connection:
                assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
                assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    finally:
        store.close()
        inline.dispose()
