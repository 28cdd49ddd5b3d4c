"""Every path by which the store turns rows into structs, on SQLite and PostgreSQL.

These paths broke once on an upstream release (msgspec 0.23 stopped returning a field's default
when a `Row` lacked the column); this module runs each of them with the locked versions, and with
the newest ones under `tox -e upgrade` (the run's header names the versions).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, select

from service.deadletters.consumer import store_batch
from service.search_syntax import parse
from service.store import dead_letters, documents, redrives, schema, search, task_runs
from service.store.database import Store, as_struct
from service.store.dead_letters import Filters
from tests.store.test_dead_letters import message
from tests.store.test_documents_and_search import add_document, extraction


def test_dead_letters_convert_by_id_in_pages_in_batches_and_in_groups(store: Store) -> None:
    died = datetime.now(UTC).replace(microsecond=0)
    stored = store.run(store_batch, [message(n, died - timedelta(seconds=n)) for n in range(3)])
    ids = [record_id for record_id, _ in stored]

    summary = store.run(dead_letters.get, ids[0], with_body=False)
    assert summary is not None
    assert summary.body == b"", "the summary leaves the body out and takes the default"
    full = store.run(dead_letters.get, ids[0])
    assert full is not None
    assert full.body == b'[[], {"n": 0}, {}]'
    assert full.headers["task"] == "docproc.document.process"

    first = store.run(dead_letters.page, Filters(status="all"), limit=2)
    assert [letter.id for letter in first.items] == ids[:2]
    assert all(letter.body == b"" for letter in first.items)
    assert first.next_cursor is not None
    rest = store.run(dead_letters.page, Filters(status="all"), limit=2, cursor=first.next_cursor)
    assert [letter.id for letter in rest.items] == ids[2:]
    assert rest.next_cursor is None

    batch = store.run(dead_letters.get_many, ids)
    assert sorted(batch) == sorted(ids)
    assert batch[ids[1]].body == b'[[], {"n": 1}, {}]'

    [group] = store.run(dead_letters.groups, Filters())
    assert group.count == 3
    assert group.example_id in ids

    store.run(dead_letters.discard, ids[0])
    assert store.run(dead_letters.discard, ids[0]) is False, "discarding twice changes nothing"
    discarded = store.run(dead_letters.page, Filters(status="discarded"), limit=10)
    assert [letter.id for letter in discarded.items] == ids[:1]


def test_redrives_convert_when_created_claimed_read_and_listed(store: Store) -> None:
    died = datetime.now(UTC)
    store.run(store_batch, [message(n, died) for n in range(2)])

    job = store.run(redrives.create, Filters(task="docproc.document.process"), 5.0)
    assert (job.state, job.matched, job.owner) == ("running", 2, None)
    claimed = store.run(redrives.claim, "runner-1", died - timedelta(minutes=1))
    assert claimed is not None
    assert claimed.owner == "runner-1"
    again = store.run(redrives.get, job.id)
    assert again is not None
    assert again.filters["task"] == "docproc.document.process"
    assert [listed.id for listed in store.run(redrives.listing)] == [job.id]


def test_documents_search_hits_and_task_runs_convert(store: Store) -> None:
    document_id = add_document(store, b"the lighthouse keeper")
    [unpublished] = store.run(documents.unpublished, datetime.now(UTC) + timedelta(seconds=1), 10)
    assert unpublished.id == document_id
    store.run(documents.store_extraction, document_id, extraction("the lighthouse keeper"))
    document = store.run(documents.get, document_id)
    assert document is not None
    assert (document.chunk_count, document.title) == (1, "T")

    [hit] = store.run(search.search, parse("lighthouse")).hits
    assert hit.document_id == document_id

    store.run(task_runs.record_pending, "t-1", "docproc.document.process", document_id=document_id)
    store.run(
        task_runs.record_retry, "t-1", retries=1, delay=2.0, error_type="DatabaseError", message="x"
    )
    run = store.run(task_runs.get, "t-1")
    assert run is not None
    assert run.state == "RETRY"
    assert [entry.delay for entry in run.retry_history] == [2.0]
    assert run.retry_history[0].at.tzinfo is not None


def test_a_fetch_reads_each_column_as_sqlalchemy_reads_it(store: Store) -> None:
    """`Fetch` runs on the driver's cursor with the columns' own conversions: every column of a
    run — timestamps, JSON lists of structs, numbers, nulls — as SQLAlchemy's result gives it."""
    store.run(task_runs.record_pending, "t-1", "docproc.document.process", document_id="d-1")
    store.run(
        task_runs.record_retry, "t-1", retries=1, delay=2.5, error_type="DatabaseError", message="é"
    )
    store.run(task_runs.record_progress, "t-1", step="index", steps_done=1, steps_total=3)
    store.run(task_runs.record_pending, "t-2", "docproc.canary.succeed", document_id=None)

    def through_sqlalchemy(connection: Connection) -> list[task_runs.TaskRun]:
        rows = connection.execute(select(schema.task_runs).order_by(schema.task_runs.c.task_id))
        return [as_struct(row, task_runs.TaskRun, strict=False) for row in rows]

    expected = store.run(through_sqlalchemy)
    assert [run.task_id for run in expected] == ["t-1", "t-2"]
    assert store.run(task_runs.get, "t-1") == expected[0]
    assert store.run(task_runs.get, "t-2") == expected[1]
    assert store.run(task_runs.get, "t-3") is None
    many = store.run(task_runs.get_many, ["t-2", "t-3", "t-1"])
    assert sorted(many, key=lambda run: run.task_id) == expected
    assert expected[0].retry_history[0].message == "é"
    assert expected[0].percent == 33.3
