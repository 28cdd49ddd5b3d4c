"""An upgrade is all or nothing on both stores, and a store docproc cannot use is refused at start
with one line that says the fix (exit 78), not a traceback or a run as if healthy."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text

from service.errors import ConfigError, DatabaseError
from service.store import migrations
from service.store.engine import sync_engine
from tests.support import run_docproc


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of the test's own (the session's PostgreSQL database is shared)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'docproc.db'}"
        return
    parts = urlsplit(request.getfixturevalue("postgres_url"))
    admin = urlunsplit(parts._replace(path="/postgres"))
    name = f"docproc_migrate_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _execute(url: str, *statements: str) -> None:
    engine = sync_engine(url)
    try:
        with engine.begin() as connection:
            for statement in statements:
                connection.execute(text(statement))
    finally:
        engine.dispose()


def _migrate_to(url: str, revision: str) -> None:
    engine = sync_engine(url)
    try:
        with engine.begin() as connection:
            config = Config()
            config.set_main_option("script_location", str(migrations.HERE))
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    finally:
        engine.dispose()


def _listing(connection: Connection) -> list[Any]:
    if connection.dialect.name == "sqlite":
        query = "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name"
        return [tuple(row) for row in connection.execute(text(query))]
    queries = (
        "SELECT table_name, column_name, data_type, is_nullable, column_default"
        " FROM information_schema.columns WHERE table_schema = 'public' ORDER BY 1, 2",
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1",
        "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1",
    )
    return [[tuple(row) for row in connection.execute(text(query))] for query in queries]


def _state(url: str, rows_of: str | None = None) -> dict[str, Any]:
    """What an upgrade may change: the revision, the schema (tables, columns, indexes,
    triggers, SQLite's full-text tables), and the rows of table `rows_of`."""
    engine = sync_engine(url)
    try:
        with engine.connect() as connection:
            rows = (
                [tuple(row) for row in connection.execute(text(f"SELECT * FROM {rows_of}"))]
                if rows_of
                else []
            )
            return {
                "revision": migrations.current(connection),
                "schema": _listing(connection),
                "rows": sorted(rows),
            }
    finally:
        engine.dispose()


def _fail_when_version_becomes(url: str, revision: str) -> None:
    """A trigger that fails the upgrade's last statement: the move of `alembic_version` to
    `revision`, after every step before it has run."""
    if url.startswith("sqlite"):
        _execute(
            url,
            "CREATE TRIGGER fail_at_head BEFORE UPDATE ON alembic_version"
            f" WHEN NEW.version_num = '{revision}'"
            " BEGIN SELECT RAISE(ABORT, 'injected failure'); END",
        )
        return
    _execute(
        url,
        "CREATE FUNCTION fail_at_head() RETURNS trigger LANGUAGE plpgsql AS"
        " $$ BEGIN RAISE EXCEPTION 'injected failure'; END $$",
        "CREATE TRIGGER fail_at_head BEFORE UPDATE ON alembic_version FOR EACH ROW"
        f" WHEN (NEW.version_num = '{revision}') EXECUTE FUNCTION fail_at_head()",
    )


def _no_failure(url: str) -> None:
    on = "" if url.startswith("sqlite") else " ON alembic_version"
    _execute(url, f"DROP TRIGGER fail_at_head{on}")


def test_an_upgrade_that_fails_at_its_end_changes_nothing_and_the_next_start_upgrades(
    empty_url: str,
) -> None:
    """Every step from 0003 to the head — columns added in and out of batch mode, tables,
    indexes (an expression index among them), 0010's UPDATE of existing rows — runs, and the
    last statement fails: the store is as it was. On SQLite each CREATE and ALTER committed on
    its own: the retry then failed for ever ("duplicate column name")."""
    _migrate_to(empty_url, "0002")
    _execute(
        empty_url,
        "INSERT INTO redrives (id, filters, rate, state, matched, published, failed,"
        " created_at, updated_at) VALUES ('job', '{}', 1.0, 'running', 2, 0, 0,"
        " '2026-12-01 10:00:00+00:00', '2026-12-01 10:00:00+00:00')",
        "INSERT INTO redrive_items (redrive_id, dead_letter_id, position, state)"
        " VALUES ('job', 'a', 0, 'pending'), ('job', 'b', 1, 'pending')",
    )
    _fail_when_version_becomes(empty_url, migrations.head())
    before = _state(empty_url, "redrive_items")

    with pytest.raises(DatabaseError) as failed:
        migrations.upgrade(empty_url)

    assert _state(empty_url, "redrive_items") == before
    said = str(failed.value)
    assert f"from 0002 to {migrations.head()}" in said
    assert "injected failure" in said
    assert "nothing was changed" in said
    assert "DOCPROC_DATABASE_URL" not in said  # not a wrong URL: the store was reached
    _no_failure(empty_url)
    assert migrations.upgrade(empty_url) == migrations.head()


def test_an_upgrade_of_a_new_store_that_fails_midway_leaves_it_as_it_was(empty_url: str) -> None:
    """From nothing (SQLite's full-text table and its triggers among the steps), stopped in
    0003 by a table already there under one of its names."""
    _execute(empty_url, "CREATE TABLE leases (name VARCHAR(64) PRIMARY KEY)")
    before = _state(empty_url)

    with pytest.raises(DatabaseError) as failed:
        migrations.upgrade(empty_url)

    assert _state(empty_url) == before
    assert f"from empty to {migrations.head()}" in str(failed.value)
    _execute(empty_url, "DROP TABLE leases")
    assert migrations.upgrade(empty_url) == migrations.head()


def at_a_newer_revision(url: str) -> str:
    """Makes the store at `url` one a newer docproc upgraded: its revision, unknown here."""
    newer = f"{int(migrations.head()) + 1:04d}"
    migrations.upgrade(url)
    _execute(url, f"UPDATE alembic_version SET version_num = '{newer}'")
    return newer


def test_a_store_newer_than_this_docproc_is_refused_with_the_way_out(empty_url: str) -> None:
    newer = at_a_newer_revision(empty_url)

    with pytest.raises(ConfigError) as refused:
        migrations.upgrade(empty_url)

    said = str(refused.value)
    assert f"at revision {newer}, newer than this docproc (its newest is {migrations.head()})" in (
        said
    )
    assert "run the docproc that upgraded it, or restore a backup" in said
    assert _state(empty_url)["revision"] == newer


@pytest.fixture
def immutable() -> Iterator[list[Path]]:
    """Files made immutable (`chattr +i`: root cannot write them either), made mutable again."""
    paths: list[Path] = []
    yield paths
    for path in paths:
        subprocess.run(["chattr", "-i", str(path)], check=False)


def _make_read_only(url: str, immutable: list[Path]) -> str:
    """The URL of the store at `url` as one that takes no writes: the SQLite file immutable, a
    PostgreSQL session whose transactions are read-only (a standby's)."""
    if not url.startswith("sqlite"):
        return f"{url}?options=-c%20default_transaction_read_only%3Don"
    path = Path(url.removeprefix("sqlite:///"))
    try:
        made = subprocess.run(
            ["chattr", "+i", str(path)], check=False, capture_output=True, text=True
        )
    except FileNotFoundError:
        pytest.skip("no chattr here to make the store's file read-only")
    if made.returncode != 0:
        pytest.skip(f"chattr +i is refused here: {made.stderr.strip()}")
    immutable.append(path)
    return url


def test_a_store_that_takes_no_writes_is_refused_with_the_fix(
    empty_url: str, immutable: list[Path]
) -> None:
    """Before, it was taken as healthy: every upload answered 503, every task waited for it."""
    migrations.upgrade(empty_url)
    read_only = _make_read_only(empty_url, immutable)

    with pytest.raises(ConfigError) as refused:
        migrations.upgrade(read_only)

    said = str(refused.value)
    assert "takes no writes" in said
    if empty_url.startswith("sqlite"):
        path = Path(empty_url.removeprefix("sqlite:///"))
        assert "attempt to write a readonly database" in said
        assert f"make {path} (and {path.parent}) writable" in said
    else:
        assert "read-only transaction" in said
        assert "as a user that may write" in said


@pytest.mark.parametrize("where", ["a file", "/proc"])
def test_a_data_directory_that_cannot_be_made_is_refused_with_the_fix(
    where: str, tmp_path: Path
) -> None:
    (tmp_path / "afile").write_text("")
    directory = tmp_path / "afile" / "sub" if where == "a file" else Path("/proc/docproc-x")

    with pytest.raises(ConfigError) as refused:
        migrations.upgrade(f"sqlite:///{directory / 'docproc.db'}")

    said = str(refused.value)
    assert f"cannot create the store's directory {directory}" in said
    assert "set DOCPROC_DATA_DIR, or the path in DOCPROC_DATABASE_URL" in said


@pytest.mark.parametrize("case", ["newer store", "data directory"])
def test_serve_api_refuses_such_a_store_in_one_line(case: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCPROC_", "CELERY_"))}
    if case == "newer store":
        url = f"sqlite:///{tmp_path / 'docproc.db'}"
        at_a_newer_revision(url)
        env |= {"DOCPROC_DATABASE_URL": url, "DOCPROC_DATA_DIR": str(tmp_path)}
        expected = "newer than this docproc"
    else:
        (tmp_path / "afile").write_text("")
        env["DOCPROC_DATA_DIR"] = str(tmp_path / "afile" / "sub")
        expected = f"cannot create the store's directory {tmp_path / 'afile' / 'sub'}"

    served = run_docproc("serve", "api", env=env, timeout=60)

    assert served.returncode == 78, served.stderr
    assert "Traceback" not in served.stderr
    line = next(line for line in served.stderr.splitlines() if line.startswith("docproc: "))
    assert expected in line
