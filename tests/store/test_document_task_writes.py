"""A document task's two writes — its start with the load, its outcome with the text — made as
`Store.run_alone` makes them (one statement each on PostgreSQL), against the same writes made
statement by statement in a transaction: the store must end the same either way."""

from __future__ import annotations

import hashlib
import uuid
from datetime import timedelta
from typing import Any

import msgspec
import pytest
from sqlalchemy import Connection, select, text
from sqlalchemy.dialects import postgresql

from service.deadletters.consumer import store_batch
from service.deadletters.parsing import RawMessage
from service.indexing import index_document
from service.intake import Upload, accept
from service.settings import Settings
from service.store import documents, outcomes, task_runs
from service.store.database import Store
from service.store.documents import Extraction
from service.store.schema import chunks, document_texts, utcnow
from service.store.schema import dead_letters as letters_table
from service.store.schema import documents as documents_table
from service.store.schema import task_runs as runs_table
from service.store.task_runs import Start, StepTime
from tests.store.test_documents_and_search import extraction

_VARYING = {"id", "document_id", "task_id", "correlation_id", "sha256", "filename", "content"}
"""Columns that differ between two documents of a test by construction, or hold a time."""


def accepted(
    store: Store,
    content: bytes | None = None,
    filename: str = "a.txt",
    content_type: str = "text/plain",
) -> tuple[str, str]:
    """A document and its PENDING run, as the API accepts them (a text of its own by default)."""
    document_id, task_id = str(uuid.uuid4()), str(uuid.uuid4())
    content = f"words of {document_id}".encode() if content is None else content
    upload = Upload(
        filename=filename,
        content_type=content_type,
        content=content,
        sha256=hashlib.sha256(content).hexdigest(),
        correlation_id=task_id,
    )
    store.run(accept, upload, document_id, task_id)
    return document_id, task_id


def start_of(document_id: str, task_id: str) -> Start:
    return Start(
        task_id=task_id,
        task_name="docproc.document.process",
        retries=1,
        queue="document_processing",
        worker="celery@w1",
        correlation_id=task_id,
        document_id=document_id,
        first_step="load",
        steps_total=4,
    )


def letter_for(store: Store, task_id: str) -> None:
    """A dead letter of the task, from an earlier attempt that died."""
    headers: dict[str, Any] = {
        "task": "docproc.document.process",
        "id": task_id,
        "x-death": [
            {"count": 1, "reason": "rejected", "queue": "document_processing", "time": utcnow()}
        ],
    }
    message = RawMessage(body=b"[[], {}, {}]", headers=headers, properties={}, redelivered=False)
    store.run(store_batch, [message])


def _row(connection: Connection, table: Any, column: Any, key: str) -> dict[str, Any]:
    row = connection.execute(select(table).where(column == key)).mappings().one()
    return {
        name: value
        for name, value in row.items()
        if name not in _VARYING and not name.endswith("_at")
    } | {name: value is not None for name, value in row.items() if name.endswith("_at")}


def state(store: Store, document_id: str, task_id: str) -> dict[str, Any]:
    """What the two writes leave: the document, its text and chunks, its run and its letters —
    times only as set or not."""

    def read(connection: Connection) -> dict[str, Any]:
        chunk_rows = connection.execute(
            select(chunks.c.position, chunks.c.start_offset, chunks.c.end_offset, chunks.c.content)
            .where(chunks.c.document_id == document_id)
            .order_by(chunks.c.position)
        ).all()
        letters = connection.execute(
            select(letters_table.c.superseded_at).where(letters_table.c.task_id == task_id)
        ).all()
        return {
            "document": _row(connection, documents_table, documents_table.c.id, document_id),
            "text": connection.execute(
                select(document_texts.c.text).where(document_texts.c.document_id == document_id)
            ).scalar_one_or_none(),
            "chunks": [tuple(row) for row in chunk_rows],
            "run": _row(connection, runs_table, runs_table.c.task_id, task_id),
            "letters superseded": [superseded is not None for (superseded,) in letters],
        }

    return store.run(read)


NOW = utcnow()
TIMES = [StepTime(step="load", started_at=NOW, seconds=0.25)]


def by_statements(store: Store, document_id: str, task_id: str, found: Extraction) -> None:
    """The two writes as a transaction each, a statement at a time."""

    def load(connection: Connection) -> documents.Upload | None:
        outcomes.task_started(connection, start_of(document_id, task_id))
        return documents.get_upload(connection, document_id)

    def finish(connection: Connection) -> None:
        documents.store_extraction(connection, document_id, found)
        outcomes.task_succeeded(connection, task_id, TIMES)

    assert store.run(load) is not None
    store.run(finish)


def test_a_task_started_and_stored_alone_leaves_what_statement_by_statement_does(
    store: Store,
) -> None:
    found = extraction("the lighthouse keeper", "climbed the stairs", "every evening")
    (one, one_task), (other, other_task) = accepted(store), accepted(store)
    letter_for(store, one_task)
    letter_for(store, other_task)

    upload = store.run_alone(outcomes.document_loaded, one, start_of(one, one_task))
    assert upload is not None
    assert (upload.id, upload.processed) == (one, False)
    assert store.run_alone(outcomes.document_stored, one, found, one_task, TIMES)
    by_statements(store, other, other_task, found)

    alone, statements = state(store, one, one_task), state(store, other, other_task)
    assert alone == statements
    assert alone["run"]["state"] == "SUCCESS"
    assert alone["run"]["step_times"] is not None
    assert alone["document"]["published_at"] is True, "the start proves the publish"
    assert alone["document"]["processed_at"] is True
    assert alone["text"] == found.text
    assert len(alone["chunks"]) == 3
    assert alone["letters superseded"] == [True]


def test_a_second_delivery_stores_nothing_and_still_records_its_success(store: Store) -> None:
    document_id, task_id = accepted(store)
    first = extraction("alpha one", "beta two")
    assert store.run_alone(outcomes.document_stored, document_id, first, None)
    before = state(store, document_id, task_id)
    assert before["run"]["state"] == "PENDING"

    upload = store.run_alone(outcomes.document_loaded, document_id, start_of(document_id, task_id))
    assert upload is not None
    assert upload.processed
    again = extraction("other words", "entirely", "and more")
    assert not store.run_alone(outcomes.document_stored, document_id, again, task_id, TIMES)

    after = state(store, document_id, task_id)
    assert (after["text"], after["chunks"]) == (before["text"], before["chunks"])
    assert after["document"] == before["document"] | {"published_at": True}
    assert after["run"]["state"] == "SUCCESS"


def test_a_start_leaves_a_run_that_succeeded_as_it_was(store: Store) -> None:
    document_id, task_id = accepted(store)
    store.run_alone(outcomes.document_stored, document_id, extraction("done"), task_id, TIMES)
    succeeded = state(store, document_id, task_id)["run"]

    store.run_alone(outcomes.document_loaded, document_id, start_of(document_id, task_id))

    assert state(store, document_id, task_id)["run"] == succeeded


def test_a_second_delivery_after_success_leaves_the_runs_outcome_as_it_was(store: Store) -> None:
    """Skipped (its document processed), the copy recorded its success again: with its own step
    times (its load alone) over the run's, and its finish later, counted in the throughput of
    another minute."""
    document_id, task_id = accepted(store)
    store.run_alone(outcomes.document_stored, document_id, extraction("done"), task_id, TIMES)
    succeeded = state(store, document_id, task_id)["run"]

    store.run_alone(outcomes.document_loaded, document_id, start_of(document_id, task_id))
    load_only = [StepTime(step="load", started_at=utcnow(), seconds=0.001)]
    store.run(outcomes.task_succeeded, task_id, load_only)  # `index_document`'s skip
    store.run_alone(outcomes.document_stored, document_id, extraction("x"), task_id, load_only)

    assert state(store, document_id, task_id)["run"] == succeeded


def test_a_republish_of_a_letter_of_a_task_that_succeeded_leaves_it_succeeded(
    store: Store,
) -> None:
    """A letter stored as its task succeeded stays active until beat settles it (PostgreSQL's
    race, `dead_letters.supersede_recent`); re-published meanwhile, its run was made PENDING,
    though the worker skips the message (the document is processed)."""
    document_id, task_id = accepted(store)
    letter_for(store, task_id)
    store.run_alone(outcomes.document_stored, document_id, extraction("done"), task_id, TIMES)
    seen = store.run(task_runs.versions, {task_id})[task_id]

    store.run(task_runs.requeue, task_runs.Requeue(task_id, "x", "document_processing", seen))

    run = store.run(task_runs.get, task_id)
    assert run is not None
    assert run.state == "SUCCESS"


def ended_as(store: Store, task_id: str, state: str) -> dict[str, Any]:
    """The run ended as `state` (FAILURE: the worker's failure recorded, its letter on its way;
    DEAD: its letter stored): the run as it is."""
    store.run(
        outcomes.task_failed,
        task_id,
        "docproc.document.process",
        state="FAILURE",
        error_type="CorruptFile",
        message="not a valid PDF",
    )
    if state == "DEAD":
        store.run(task_runs.record_dead, [(task_id, "docproc.document.process", "rejected", "r")])
    run = store.run(task_runs.get, task_id)
    assert run is not None
    assert run.state == state
    return msgspec.to_builtins(run)


@pytest.mark.parametrize("ended", ["FAILURE", "DEAD"])
def test_a_copy_of_the_message_of_a_run_that_ended_does_not_start_it(
    store: Store, ended: str
) -> None:
    """A copy (the relay's after a publish reported lost, the sweeper's, reconciliation's) of a
    task that failed for good ran again: it failed again, and the task had two dead letters for
    one failure, its run DEAD → PROCESSING → FAILURE → DEAD."""
    document_id, task_id = accepted(store)
    store.run_alone(outcomes.document_loaded, document_id, start_of(document_id, task_id))
    before = ended_as(store, task_id, ended)

    upload = store.run_alone(outcomes.document_loaded, document_id, start_of(document_id, task_id))

    assert upload is not None
    assert upload.refused == ended
    run = store.run(task_runs.get, task_id)
    assert run is not None
    assert msgspec.to_builtins(run) == before


def test_the_worker_skips_a_copy_of_a_dead_task_without_recording_anything(store: Store) -> None:
    document_id, task_id = accepted(store)
    store.run_alone(outcomes.document_loaded, document_id, start_of(document_id, task_id))
    before = ended_as(store, task_id, "DEAD")

    done = index_document(
        store, document_id, Settings(), start=start_of(document_id, task_id), step_times=list
    )

    assert done == {"document_id": document_id, "skipped": "its task is DEAD"}
    run = store.run(task_runs.get, task_id)
    assert run is not None
    assert msgspec.to_builtins(run) == before


def started_again(store: Store, document_id: str, again: Start) -> task_runs.TaskRun:
    """The run, once `again` loaded the document and was not refused."""
    upload = store.run_alone(outcomes.document_loaded, document_id, again)
    assert upload is not None
    assert upload.refused is None
    run = store.run(task_runs.get, again.task_id)
    assert run is not None
    return run


@pytest.mark.parametrize(
    ("ended", "delivery"),
    [
        ("DEAD", {"republished": True}),
        ("FAILURE", {"republished": True}),
        ("FAILURE", {"redelivered": True}),
    ],
)
def test_a_republished_letter_or_a_failures_redelivery_starts_the_run_again(
    store: Store, ended: str, delivery: dict[str, bool]
) -> None:
    """A dead letter re-published runs again, even before its re-publishing is recorded (the
    run still DEAD); so does RabbitMQ's delivery again of a failed run's message whose reject
    never reached it — its one dead letter comes of this delivery."""
    document_id, task_id = accepted(store)
    store.run_alone(outcomes.document_loaded, document_id, start_of(document_id, task_id))
    ended_as(store, task_id, ended)
    again = msgspec.structs.replace(start_of(document_id, task_id), **delivery)

    run = started_again(store, document_id, again)

    assert (run.state, run.error_type) == ("PROCESSING", None)


BUSY_FOR = 2460.0
"""As the worker's default: the hard time limit and a minute."""


def first_copy(document_id: str, task_id: str) -> Start:
    """A delivery of the task's first message, one of its copies."""
    return msgspec.structs.replace(
        start_of(document_id, task_id), retries=0, first=True, busy_for=BUSY_FOR
    )


def silent_for(store: Store, task_id: str, seconds: float) -> None:
    """The run's last sign of life (its start or progress, its retry's due time) as long ago."""
    at = utcnow() - timedelta(seconds=seconds)
    store.run(
        lambda c: c.execute(
            runs_table.update()
            .where(runs_table.c.task_id == task_id)
            .values(updated_at=at, next_retry_at=at)
        )
    )


def retrying(store: Store, document_id: str, task_id: str) -> None:
    store.run_alone(outcomes.document_loaded, document_id, first_copy(document_id, task_id))
    store.run(
        task_runs.record_retry,
        task_id,
        retries=1,
        delay=60.0,
        error_type="SearchIndexError",
        message="the index is busy",
    )


@pytest.mark.parametrize("at_work", ["PROCESSING", "RETRY"])
def test_a_copy_of_the_first_message_does_not_start_a_run_another_delivery_is_at_work_on(
    store: Store, at_work: str
) -> None:
    """Two copies of a task's first message (the relay's after a publish reported lost, and
    the one that did go out) were taken by the worker's two processes together and ran side by
    side: a failure made two dead letters, a transient one two retry chains (a copy that
    arrived while the run waited for its retry started a second)."""
    document_id, task_id = accepted(store)
    if at_work == "RETRY":
        retrying(store, document_id, task_id)
    else:
        store.run_alone(outcomes.document_loaded, document_id, first_copy(document_id, task_id))
    before = msgspec.to_builtins(store.run(task_runs.get, task_id))

    done = index_document(
        store, document_id, Settings(), start=first_copy(document_id, task_id), step_times=list
    )

    assert done == {
        "document_id": document_id,
        "skipped": "another delivery of its task is at work on it",
    }
    assert msgspec.to_builtins(store.run(task_runs.get, task_id)) == before


def test_a_start_sent_again_after_its_answer_was_lost_is_its_own(store: Store) -> None:
    """On PostgreSQL the start goes again when its connection is found dead (`Store.run_alone`):
    it may have committed, its answer lost. Sent again, it found the run PROCESSING — started
    by itself — refused itself as a copy, and the document was skipped, its run PROCESSING for
    ever."""
    document_id, task_id = accepted(store)
    start = first_copy(document_id, task_id)
    store.run_alone(outcomes.document_loaded, document_id, start)

    run = started_again(store, document_id, start)

    assert run.state == "PROCESSING"


@pytest.mark.parametrize(
    ("at_work", "delivery"),
    [
        ("PROCESSING", {"redelivered": True, "first": False}),  # its worker died
        ("PROCESSING", {"retries": 1, "first": False}),  # its wait for the store ended
        ("PROCESSING", {"silent": BUSY_FOR + 1}),  # no attempt lasts that long
        ("RETRY", {"retries": 1, "first": False}),  # the retry itself
        ("RETRY", {"redelivered": True, "first": False}),  # its retry could not be published
        ("RETRY", {"silent": BUSY_FOR + 1}),  # due long ago
    ],
)
def test_a_delivery_that_is_no_copy_starts_the_run(
    store: Store, at_work: str, delivery: dict[str, Any]
) -> None:
    document_id, task_id = accepted(store)
    if at_work == "RETRY":
        retrying(store, document_id, task_id)
    else:
        store.run_alone(outcomes.document_loaded, document_id, first_copy(document_id, task_id))
    fields = dict(delivery)  # shared by the test's runs on each store
    silent = fields.pop("silent", None)
    if silent is not None:
        silent_for(store, task_id, silent)
    again = msgspec.structs.replace(first_copy(document_id, task_id), **fields)

    run = started_again(store, document_id, again)

    assert (run.state, run.retries) == ("PROCESSING", again.retries)


def test_an_unknown_document_loads_as_none_and_records_its_start(store: Store) -> None:
    task_id = str(uuid.uuid4())
    missing = str(uuid.uuid4())
    assert store.run_alone(outcomes.document_loaded, missing, start_of(missing, task_id)) is None
    run = store.run(task_runs.get, task_id)
    assert run is not None
    assert run.state == "PROCESSING"


@pytest.mark.parametrize(
    ("build", "values"),
    [
        (
            outcomes._started_and_loaded,
            lambda: outcomes._loaded_values("d", start_of("d", "t"), NOW),
        ),
        (
            outcomes._stored_and_succeeded,
            lambda: outcomes._stored_values("d", extraction("x"), "t", NOW, TIMES),
        ),
    ],
)
def test_no_parameter_of_a_write_made_of_several_is_taken_for_a_column_to_set(
    build: Any, values: Any
) -> None:
    """SQLAlchemy sets any column named like a parameter in every UPDATE of a statement: the
    composed statements compile the same with their parameters' names as without."""
    statement = build("postgresql")
    dialect = postgresql.psycopg.dialect()  # type: ignore[attr-defined]
    bare = str(statement.compile(dialect=dialect))
    named = str(statement.compile(dialect=dialect, column_keys=list(values())))
    assert named == bare


@pytest.mark.postgres
def test_a_write_alone_on_a_connection_that_died_is_sent_again_on_a_new_one(
    postgres_url: str,
) -> None:
    """PostgreSQL restarted since the connection was pooled: nothing was sent on it, so the
    write goes on a new one instead of failing the task."""
    store, other = Store(postgres_url, pool_size=2), Store(postgres_url)
    try:
        store.migrate()
        document_id, task_id = accepted(store)
        pid = store.read(lambda c: c.execute(text("SELECT pg_backend_pid()")).scalar_one())
        assert other.run(
            lambda c: c.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()
        )
        upload = store.run_alone(
            outcomes.document_loaded, document_id, start_of(document_id, task_id)
        )
        assert upload is not None
        assert upload.id == document_id
    finally:
        store.close()
        other.close()
