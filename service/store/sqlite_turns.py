"""SQLite writers take turns on a file lock beside the database, instead of polling its lock.

SQLite lets one connection write at a time. A connection that finds the database locked waits in
SQLite's busy handler, which sleeps 1, 2, 5, 10, 15, 20, 25 ms… between tries, however soon the
lock is freed: two processes storing small documents in one file took 0.6 to 1.0 ms more wall time
than CPU time a document, where with a file each the two were equal.

So every docproc connection to a SQLite database (`TurnTakingConnection`, the engine's) takes an
exclusive `flock` on `<database>-writer` just before the statement that opens its write
transaction — the first INSERT, UPDATE, DELETE or REPLACE, before which the sqlite3 module
begins one, and where SQLite takes its own write lock — and gives it back as soon as the
transaction commits or rolls back. A writer that finds the turn taken tries again at steps of
25 µs growing to half a millisecond: it goes on within a fraction of a millisecond of the
other's commit, and finds SQLite's lock free. Reads never take a turn (WAL: they do not wait for
the writer). `python -m bench process`, three pairs in turns with the code before: the direct
calls (2 processes, one file) 566, 520, 708 → 811, 749, 763 documents a second, 3.3, 3.6, 2.7 →
2.3, 2.5, 2.4 ms a call; the worker 191, 171, 230 → 235, 229, 234.

SQLite's own lock is still what keeps writers one at a time: a writer that does not take turns
(the sqlite3 shell, another program) is waited for in SQLite's busy handler as before. A writer
waits for its turn at most the connection's timeout, then goes on without it to SQLite's lock
and its busy timeout: a holder that hangs makes the others fail as they did, after twice the
wait, never wait for ever.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from typing import Any, Self, TypeVar, overload

_OPENS_A_TRANSACTION = ("INSERT", "UPDATE", "DELETE", "REPLACE")
"""The statements before which the sqlite3 module (Python 3.11) begins a transaction."""
FIRST_PAUSE = 25e-6
LONGEST_PAUSE = 0.0005
_Cursor = TypeVar("_Cursor", bound=sqlite3.Cursor)


def lock_path(database: str) -> str | None:
    """The turn's lock file for a database file; None for an in-memory or URI database."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return f"{database}-writer"


class _Turn:
    """One connection's place in the writers' queue: its own open file description of the lock
    file, so that two connections of one process take turns as two processes do."""

    def __init__(self, path: str | None, patience: float) -> None:
        self._path = path
        self._patience = patience
        self._fd: int | None = None
        self.held = False

    def take(self) -> None:
        if self.held or self._path is None:
            return
        if self._fd is None:
            try:
                self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError:
                self._path = None  # no lock file here: SQLite's lock alone, as without turns
                return
        deadline = time.monotonic() + self._patience
        pause = FIRST_PAUSE
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return  # on without it: SQLite's lock, and its busy timeout, decide
                time.sleep(pause)
                pause = min(pause * 2, LONGEST_PAUSE)
            else:
                self.held = True
                return

    def give_back(self) -> None:
        if self.held:
            self.held = False
            assert self._fd is not None
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        self.give_back()
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __del__(self) -> None:
        # A connection dropped without close(): sqlite3 closes the database, this closes the
        # lock file (which gives the turn back with it).
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


class TurnTakingConnection(sqlite3.Connection):
    """A sqlite3 connection that takes its turn before its first write of a transaction and
    gives it back when the transaction ends (module docstring). `timeout` is both SQLite's busy
    timeout and how long it waits for its turn."""

    def __init__(self, database: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(database, *args, **kwargs)
        timeout = float(args[0] if args else kwargs.get("timeout", 5.0))
        self._turn = _Turn(lock_path(str(database)), timeout)

    @overload
    def cursor(self, factory: None = None) -> sqlite3.Cursor: ...
    @overload
    def cursor(self, factory: Callable[[sqlite3.Connection], _Cursor]) -> _Cursor: ...
    def cursor(self, factory: Callable[[sqlite3.Connection], Any] | None = None) -> Any:
        # Connection.execute and executemany make their cursors here too.
        return super().cursor(factory or _TurnTakingCursor)

    # The shortcuts run their cursor's statement in C, past the cursor's own methods.
    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        self.before(sql)
        return super().execute(sql, parameters)

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> sqlite3.Cursor:
        self.before(sql)
        return super().executemany(sql, parameters)

    def before(self, sql: str) -> None:
        if (
            not self.in_transaction
            and self.isolation_level is not None  # None: autocommit, no transaction to end
            and sql.lstrip()[:7].upper().startswith(_OPENS_A_TRANSACTION)
        ):
            self._turn.take()

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self._turn.give_back()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self._turn.give_back()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._turn.close()

    @property
    def holds_turn(self) -> bool:
        return self._turn.held


class _TurnTakingCursor(sqlite3.Cursor):
    def execute(self, sql: str, parameters: Any = (), /) -> Self:
        self._before(sql)
        return super().execute(sql, parameters)

    def executemany(self, sql: str, seq_of_parameters: Iterable[Any], /) -> Self:
        self._before(sql)
        return super().executemany(sql, seq_of_parameters)

    def _before(self, sql: str) -> None:
        connection = self.connection
        if isinstance(connection, TurnTakingConnection):
            connection.before(sql)
