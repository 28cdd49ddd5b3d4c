"""`Bulk` hands rows to the driver itself: what it stores must be what SQLAlchemy's own executemany
stores, column for column, on SQLite and PostgreSQL (JSON as the same document)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Connection, insert, select, text

from service.errors import DatabaseError
from service.store.database import Bulk, Store
from service.store.schema import dead_letters, task_runs
from service.store.task_runs import NOT_SUCCEEDED

NOW = datetime(2026, 12, 3, 7, 30, 1, 123456, tzinfo=UTC)


def letter_row(record_id: str, **changes: Any) -> dict[str, Any]:
    return {
        "id": record_id,
        "message_key": "k" * 64,
        "body": b"\x00\xffbody",
        "content_type": "application/json",
        "content_encoding": None,
        "headers": {"task": "t", "x-death": [{"time": {"$datetime": NOW.isoformat()}}], "ü": 1.5},
        "properties": {},
        "reason": "rejected",
        "queue": "q",
        "exchange": None,
        "routing_keys": ["q", "é"],
        "death_count": 2,
        "first_death_at": NOW - timedelta(hours=1),
        "dead_at": NOW,
        "task_name": "docproc.document.process",
        "task_id": "t-1",
        "args": None,
        "kwargs": {"document_id": "d", "nested": [True, None]},
        "retries": None,
        "root_id": None,
        "parent_id": None,
        "correlation_id": "c",
        "error_type": None,
        "error_message": "line one\nline \u2028two",
        "traceback": None,
        "fingerprint": "f" * 16,
        "republished_from": None,
        "problems": None,
        "republish_count": 0,
        "republished_at": None,
        "discarded_at": None,
        "superseded_at": NOW + timedelta(microseconds=1),
        "stored_at": NOW,
        "updated_at": NOW,
    } | changes


def raw_rows(connection: Connection, table: str, key: str) -> dict[str, dict[str, Any]]:
    """Rows as the driver returns them (no SQLAlchemy type in between), JSON text parsed."""
    json_columns = {
        column.name for column in dead_letters.c if column.type.__class__.__name__ == "JSON"
    }
    json_columns |= {"retry_history", "step_times"}
    result = connection.execute(text(f"SELECT * FROM {table}"))
    rows = {}
    for row in result.mappings():
        values = dict(row)
        for name in json_columns & values.keys():
            if isinstance(values[name], str):
                values[name] = json.loads(values[name])
            if isinstance(values[name], memoryview | bytearray):
                values[name] = bytes(values[name])
        values["body"] = bytes(values["body"]) if "body" in values else None
        rows[str(values[key])] = values
    return rows


def test_a_bulk_insert_stores_what_sqlalchemy_stores(store: Store) -> None:
    columns = list(letter_row("x"))
    bulk = Bulk(lambda insert: insert(dead_letters), columns)
    ours = [letter_row("bulk-1"), letter_row("bulk-2", args=[1, "two"], superseded_at=None)]
    theirs = [letter_row("core-1"), letter_row("core-2", args=[1, "two"], superseded_at=None)]

    store.run(lambda c: bulk.execute(c, [tuple(row.values()) for row in ours]))
    store.run(lambda c: c.execute(insert(dead_letters), theirs))

    stored = store.run(raw_rows, "dead_letters", "id")
    for n in (1, 2):
        bulk_row, core_row = stored.pop(f"bulk-{n}"), stored.pop(f"core-{n}")
        assert {**bulk_row, "id": None} == {**core_row, "id": None}
    read = store.run(lambda c: c.execute(select(dead_letters).order_by(dead_letters.c.id)).all())
    assert [row._asdict() for row in read] == [*ours, *theirs]


def test_a_bulk_upsert_keeps_the_constants_of_its_conflict_clause(store: Store) -> None:
    def build(insert: Any) -> Any:
        statement = insert(task_runs)
        return statement.on_conflict_do_update(
            index_elements=["task_id"],
            set_={"state": statement.excluded.state, "next_retry_at": None},
            where=NOT_SUCCEEDED,
        )

    columns = ["task_id", "task_name", "state", "steps_done", "steps_total", "percent"]
    columns += ["retries", "retry_history", "next_retry_at", "created_at", "updated_at"]
    bulk = Bulk(build, columns)
    first = [
        ("ok", "t", "SUCCESS", 0, 0, 0.0, 0, [], None, NOW, NOW),
        ("retrying", "t", "RETRY", 0, 0, 0.0, 1, [{"at": NOW.isoformat()}], NOW, NOW, NOW),
    ]
    store.run(lambda c: bulk.execute(c, first))
    store.run(lambda c: bulk.execute(c, [(*row[:2], "DEAD", *row[3:]) for row in first]))

    runs = store.run(lambda c: {row.task_id: row for row in c.execute(select(task_runs))})
    assert (runs["ok"].state, runs["ok"].next_retry_at) == ("SUCCESS", None)
    assert (runs["retrying"].state, runs["retrying"].next_retry_at) == ("DEAD", None)
    assert runs["retrying"].retry_history == [{"at": NOW.isoformat()}]


def test_a_bulk_statement_refuses_rows_that_leave_a_defaulted_column_out(store: Store) -> None:
    bulk = Bulk(lambda insert: insert(task_runs), ["task_id", "task_name", "state"])
    with pytest.raises(ValueError, match="steps_done"):
        store.run(lambda c: bulk.execute(c, [("t", "t", "PENDING")]))


def test_json_that_msgspec_refuses_goes_as_sqlalchemy_sends_it(store: Store) -> None:
    """A lone surrogate: msgspec cannot encode it, json escapes it; the store takes or refuses
    the row as it did through SQLAlchemy's own insert."""
    bulk = Bulk(lambda insert: insert(dead_letters), list(letter_row("x")))
    odd = {"headers": {"k": "\ud800"}, "routing_keys": ["\udfff"]}

    def outcome(write: Any) -> Any:
        try:
            store.run(write)
        except DatabaseError as exc:
            return type(exc)
        return store.run(
            lambda c: c.execute(select(dead_letters.c.headers, dead_letters.c.routing_keys)).one()
        )

    ours = outcome(lambda c: bulk.execute(c, [tuple(letter_row("b", **odd).values())]))
    store.run(lambda c: c.execute(dead_letters.delete()))
    theirs = outcome(lambda c: c.execute(insert(dead_letters), [letter_row("c", **odd)]))
    assert ours == theirs


def test_a_value_its_column_cannot_convert_fails_the_statement(store: Store) -> None:
    bulk = Bulk(lambda insert: insert(dead_letters), list(letter_row("x")))
    naive = letter_row("n", dead_at=datetime(2026, 12, 3))  # Timestamp refuses naive times

    with pytest.raises(DatabaseError, match="naive datetime"):
        store.run(lambda c: bulk.execute(c, [tuple(naive.values())]))


def test_a_value_longer_than_its_column_is_refused_as_a_row_at_a_time_was(store: Store) -> None:
    """PostgreSQL refuses it (a bulk statement that cast its values to the column's type would
    cut them to fit instead); SQLite keeps any length, either way."""
    bulk = Bulk(lambda insert: insert(dead_letters), list(letter_row("x")))
    long = {"message_key": "k" * 300}

    def outcome(write: Any) -> Any:
        try:
            store.run(write)
        except DatabaseError as exc:
            return type(exc)
        return store.run(lambda c: c.execute(select(dead_letters.c.message_key)).scalar_one())

    ours = outcome(lambda c: bulk.execute(c, [tuple(letter_row("b", **long).values())]))
    store.run(lambda c: c.execute(dead_letters.delete()))
    theirs = outcome(lambda c: c.execute(insert(dead_letters), [letter_row("c", **long)]))
    assert ours == theirs
    if store.engine.dialect.name == "postgresql":
        assert isinstance(ours, type), "PostgreSQL refuses it"
        assert issubclass(ours, DatabaseError)


def test_five_hundred_rows_of_one_statement_all_arrive(store: Store) -> None:
    bulk = Bulk(lambda insert: insert(dead_letters), list(letter_row("x")))
    rows = [letter_row(f"r-{n:04}", death_count=n, task_id=None) for n in range(500)]

    store.run(lambda c: bulk.execute(c, [tuple(row.values()) for row in rows]))

    read = store.run(lambda c: c.execute(select(dead_letters).order_by(dead_letters.c.id)).all())
    assert [row._asdict() for row in read] == rows
