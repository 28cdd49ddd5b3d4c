"""Schema migrations (Alembic), run by `upgrade` at start; safe when processes start at once.

An upgrade is all or nothing, on both stores: one transaction holds every step and the move of
`alembic_version`, so a failed, interrupted or killed upgrade leaves the store as it was, and the
next start runs it again from there.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, event, make_url, text
from sqlalchemy.exc import SQLAlchemyError

from service.errors import ConfigError, DatabaseError
from service.store.engine import sqlite_path, sync_engine

HERE = Path(__file__).resolve().parent
# Any constant will do: it names the lock that serialises migrations on one PostgreSQL database.
POSTGRES_LOCK_KEY = 0x646F6370726F63
# PostgreSQL's SQLSTATEs for a store that takes no writes: a read-only transaction (a standby,
# default_transaction_read_only), a user without the privilege.
_PG_NO_WRITES = ("25006", "42501")
# errno values of a path docproc may not write to, whatever it waits for.
_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


def _config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(HERE))
    config.attributes["connection"] = connection
    return config


def _script() -> ScriptDirectory:
    return ScriptDirectory(str(HERE))


def head() -> str:
    revision = _script().get_current_head()
    assert revision is not None
    return revision


def current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _no_driver_transactions(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None


def _begin_immediate(connection: Connection) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def _engine(url: str) -> Engine:
    """The engine an upgrade runs on. On SQLite, pysqlite begins a transaction only before an
    INSERT, UPDATE or DELETE: each CREATE and ALTER of a migration committed on its own, and an
    upgrade cut short left them done with `alembic_version` not moved — every later start
    failed on them ("duplicate column name"). SQLAlchemy's recipe for pysqlite ("Serializable
    isolation / Savepoints / Transactional DDL"): the driver's own handling off, BEGIN emitted
    by us; IMMEDIATE takes the write lock at once. The runtime engines are left as they are."""
    engine = sync_engine(url, pool_size=1)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _no_driver_transactions)
        event.listen(engine, "begin", _begin_immediate)
    return engine


@contextmanager
def _sqlite_lock(url: str) -> Iterator[None]:
    path = sqlite_path(url)
    if path is None or str(path) == ":memory:":
        yield
        return
    lock_path = f"{path}.migrate.lock"
    try:
        lock = os.open(lock_path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError as exc:
        if exc.errno in _NOT_WRITABLE:
            raise ConfigError(
                f"cannot write {lock_path} beside the store ({exc.strerror}): make "
                f"{path.parent} writable for the user docproc runs as"
            ) from exc
        raise DatabaseError(f"cannot write {lock_path} beside the store: {exc}") from exc
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
    finally:
        os.close(lock)


def _reason(exc: BaseException) -> str:
    return str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]


def _takes_no_writes(exc: SQLAlchemyError) -> bool:
    original = getattr(exc, "orig", None)
    if isinstance(original, sqlite3.Error):
        code = getattr(original, "sqlite_errorcode", None)
        return code is not None and code & 0xFF == sqlite3.SQLITE_READONLY
    return str(getattr(original, "sqlstate", "")) in _PG_NO_WRITES


def _refused(url: str, exc: SQLAlchemyError) -> ConfigError:
    path = sqlite_path(url)
    if path is not None:
        fix = f"make {path} (and {path.parent}) writable for the user docproc runs as"
    else:
        fix = "point DOCPROC_DATABASE_URL at a primary server, as a user that may write"
    return ConfigError(f"the store at {_shown(url)} takes no writes ({_reason(exc)}): {fix}")


def _shown(url: str) -> str:
    return make_url(url).render_as_string()  # the password hidden


def _probe_writes(connection: Connection) -> None:
    """Fails unless the store takes writes: an UPDATE of no row still asks for the write lock
    (SQLite) or a writable transaction (PostgreSQL). A read-only store otherwise ran as if
    healthy, every upload and task failing on it."""
    connection.execute(
        text("UPDATE alembic_version SET version_num = version_num WHERE version_num IS NULL")
    )


def _to_head(connection: Connection, url: str) -> str:
    """Brings the store of `connection`, in its transaction, to the newest schema."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": POSTGRES_LOCK_KEY})
    script = _script()
    found, newest = current(connection), script.get_current_head()
    assert newest is not None
    if found is not None and found not in {step.revision for step in script.walk_revisions()}:
        raise ConfigError(
            f"the store at {_shown(url)} is at revision {found}, newer than this docproc (its "
            f"newest is {newest}): run the docproc that upgraded it, or restore a backup of the "
            "store from before that upgrade"
        )
    if found != newest:
        try:
            command.upgrade(_config(connection), "head")
        except SQLAlchemyError as exc:
            if _takes_no_writes(exc):
                raise _refused(url, exc) from exc
            raise DatabaseError(
                f"cannot upgrade the store at {_shown(url)} from {found or 'empty'} to "
                f"{newest}: {_reason(exc)}; nothing was changed, the next start tries again"
            ) from exc
    try:
        _probe_writes(connection)
    except SQLAlchemyError as exc:
        if _takes_no_writes(exc):
            raise _refused(url, exc) from exc
        raise
    return newest


def upgrade(url: str) -> str:
    """Bring the database at `url` to the newest schema; returns the revision it is at.

    ConfigError when the store cannot be used as it is (newer than this docproc, read-only, its
    directory not creatable); DatabaseError when it cannot be opened or upgraded right now.
    """
    engine = _engine(url)
    try:
        with _sqlite_lock(url):
            try:
                connection = engine.connect()
            except SQLAlchemyError as exc:
                raise DatabaseError(
                    f"cannot open the store at {_shown(url)}: {_reason(exc)}; "
                    "check DOCPROC_DATABASE_URL (or DOCPROC_DATA_DIR)"
                ) from exc
            with connection, connection.begin():
                return _to_head(connection, url)
    except SQLAlchemyError as exc:  # BEGIN, the revision's read, the probe, COMMIT
        raise DatabaseError(
            f"cannot check or upgrade the store at {_shown(url)}: {_reason(exc)}; nothing was "
            "changed, the next start tries again"
        ) from exc
    finally:
        engine.dispose()
