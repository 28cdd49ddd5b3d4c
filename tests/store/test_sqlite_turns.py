"""SQLite writers take turns on a file lock, not polling SQLite's (service.store.sqlite_turns).

Each test holds a write transaction open on one connection and watches what another does, in a
thread, with a deadline: the second connection's SQLite busy timeout is 0 where it matters, so
that reaching SQLite's lock while the first holds it fails at once.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from service.store.database import Store
from service.store.sqlite_turns import TurnTakingConnection, lock_path


def connect(
    path: Path, *, timeout: float = 5.0, busy_ms: int | None = None
) -> TurnTakingConnection:
    connection = sqlite3.connect(
        path, timeout=timeout, factory=TurnTakingConnection, check_same_thread=False
    )
    connection.execute("PRAGMA journal_mode = WAL")
    if busy_ms is not None:
        connection.execute(f"PRAGMA busy_timeout = {busy_ms}")
    return connection


@pytest.fixture
def database(tmp_path: Path) -> Path:
    path = tmp_path / "turns.db"
    with connect(path) as connection:
        connection.execute("CREATE TABLE t (x INTEGER)")
    return path


@pytest.fixture
def other_thread() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(1) as pool:
        yield pool


def write(connection: TurnTakingConnection, value: int) -> None:
    connection.execute("INSERT INTO t VALUES (?)", (value,))
    connection.commit()


def test_a_writer_waits_for_its_turn_and_writes_once_the_other_commits(
    database: Path, other_thread: ThreadPoolExecutor
) -> None:
    holder = connect(database)
    holder.execute("INSERT INTO t VALUES (1)")
    assert holder.holds_turn
    waiter = connect(database, busy_ms=0)  # SQLite's own lock would refuse it at once

    waiting: Future[None] = other_thread.submit(write, waiter, 2)

    with pytest.raises(TimeoutError):  # neither written nor refused: waiting for its turn
        waiting.result(timeout=0.5)
    holder.commit()
    assert not holder.holds_turn
    waiting.result(timeout=10)
    assert holder.execute("SELECT x FROM t ORDER BY x").fetchall() == [(1,), (2,)]


def test_a_reader_takes_no_turn_and_does_not_wait_for_a_writer(
    database: Path, other_thread: ThreadPoolExecutor
) -> None:
    holder = connect(database)
    holder.execute("INSERT INTO t VALUES (1)")
    reader = connect(database, busy_ms=0)

    count = other_thread.submit(lambda: reader.execute("SELECT count(*) FROM t").fetchone())

    assert count.result(timeout=10) == (0,)  # before the writer commits
    assert not reader.holds_turn
    holder.rollback()


def test_a_writer_kept_waiting_past_its_timeout_meets_sqlites_lock_and_its_error(
    database: Path, other_thread: ThreadPoolExecutor
) -> None:
    holder = connect(database)
    holder.execute("INSERT INTO t VALUES (1)")  # and never lets go, as a hung process would
    impatient = connect(database, timeout=0.3)

    refused = other_thread.submit(write, impatient, 2)

    with pytest.raises(sqlite3.OperationalError, match="locked"):
        refused.result(timeout=10)
    holder.rollback()
    write(impatient, 3)  # the turn and the lock are free again


def test_the_turn_is_given_back_when_a_transaction_ends_however_it_ends(database: Path) -> None:
    connection = connect(database)
    connection.execute("SELECT count(*) FROM t").fetchone()
    assert not connection.holds_turn

    connection.execute("UPDATE t SET x = 0")
    assert connection.holds_turn
    connection.commit()
    assert not connection.holds_turn

    connection.executemany("INSERT INTO t VALUES (?)", [(1,), (2,)])
    assert connection.holds_turn
    connection.rollback()
    assert not connection.holds_turn

    connection.execute("DELETE FROM t")
    connection.close()  # a closed connection's transaction is rolled back, its turn freed
    write(connect(database, busy_ms=0), 4)


def test_the_stores_connections_take_turns_beside_the_database_file(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = Store(f"sqlite:///{path}")
    try:
        store.migrate()
        raw = store.engine.raw_connection()
        try:
            assert isinstance(raw.driver_connection, TurnTakingConnection)
        finally:
            raw.close()
    finally:
        store.close()
    assert lock_path(str(path)) == f"{path}-writer"
    assert lock_path(":memory:") is None
