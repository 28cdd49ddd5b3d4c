"""Schema migrations (Alembic), run by `upgrade` at start; safe when processes start at once."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, make_url, text
from sqlalchemy.exc import SQLAlchemyError

from service.errors import DatabaseError
from service.store.engine import sqlite_path, sync_engine

HERE = Path(__file__).resolve().parent
# Any constant will do: it names the lock that serialises migrations on one PostgreSQL database.
POSTGRES_LOCK_KEY = 0x646F6370726F63


def _config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(HERE))
    config.attributes["connection"] = connection
    return config


def head() -> str:
    script = ScriptDirectory(str(HERE))
    revision = script.get_current_head()
    assert revision is not None
    return revision


def current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


@contextmanager
def _sqlite_lock(url: str) -> Iterator[None]:
    path = sqlite_path(url)
    if path is None or str(path) == ":memory:":
        yield
        return
    with open(f"{path}.migrate.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def upgrade(url: str) -> str:
    """Bring the database at `url` to the newest schema; returns the revision it is at."""
    engine = sync_engine(url)
    try:
        with _sqlite_lock(url), engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": POSTGRES_LOCK_KEY}
                )
            if current(connection) != head():
                command.upgrade(_config(connection), "head")
            revision = current(connection)
    except (SQLAlchemyError, OSError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise DatabaseError(
            f"cannot open the store at {make_url(url).render_as_string()}: {reason}; "
            "check DOCPROC_DATABASE_URL (or DOCPROC_DATA_DIR)"
        ) from exc
    finally:
        engine.dispose()
    assert revision is not None
    return revision
