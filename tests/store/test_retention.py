"""Beat's retention deletes nothing something still needs: a run waiting for its dead letter, a
letter a redrive has yet to re-publish or whose re-publishing is in doubt, a row another
transaction has just made live again (PostgreSQL rechecks only the DELETE's own conditions on a
row it waited for)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, text, update

from service.deadletters.consumer import store_batch
from service.deadletters.parsing import RawMessage
from service.settings import Settings
from service.store import dead_letters, documents, idempotency, outcomes, redrives, task_runs
from service.store.database import Store
from service.store.dead_letters import Filters
from service.store.schema import dead_letters as letters_table
from service.store.schema import documents as documents_table
from service.store.schema import idempotency_keys, utcnow
from service.store.schema import task_runs as runs_table
from service.task_contract import (
    ERROR_MESSAGE_HEADER,
    ERROR_TYPE_HEADER,
    EXPIRE_TASK_RUNS,
    PROCESS_DOCUMENT,
    PUBLISH_UNPUBLISHED,
    PURGE_DEAD_LETTERS,
)
from service.worker.app import create_celery
from tests.store.test_documents_and_search import add_document
from tests.support import eventually, free_port


def letter(
    task_id: str, died: datetime, queue: str = "document_processing", **headers: Any
) -> RawMessage:
    return RawMessage(
        body=b'[[], {"document_id": "d"}, {}]',
        headers={
            "task": PROCESS_DOCUMENT,
            "id": task_id,
            "x-death": [{"count": 1, "reason": "rejected", "queue": queue, "time": died}],
            **headers,
        },
        properties={"content_type": "application/json"},
    )


def maintenance(database_url: str, name: str) -> Any:
    """Beat's task `name`, run as a worker runs it."""
    app = create_celery(Settings(database_url=database_url))
    try:
        return app.tasks[name].run()
    finally:
        app.close()


def test_a_failure_is_not_expired_before_its_dead_letter_comes(
    store: Store, database_url: str
) -> None:
    """Its letter two hours late (the DLQ consumer down): expire-task-runs had deleted the
    FAILURE, so the letter kept the error its retry headers carried — an earlier attempt's store
    outage, not the corrupt file — with no traceback, grouped with the outage's letters (whose
    redrive sends the corrupt file round again)."""
    now = utcnow()
    for task_id in ("late", "prompt"):
        store.run(task_runs.record_pending, task_id, PROCESS_DOCUMENT)
        store.run(
            outcomes.task_failed,
            task_id,
            PROCESS_DOCUMENT,
            state="FAILURE",
            error_type="CorruptFile",
            message="the PDF's cross-reference table is broken",
            traceback="Traceback (most recent call last): ... CorruptFile",
        )
    two_hours_ago = now - timedelta(hours=2)  # CELERY_RESULT_EXPIRES is one
    store.run(
        lambda c: c.execute(
            update(runs_table)
            .where(runs_table.c.task_id == "late")
            .values(finished_at=two_hours_ago, updated_at=two_hours_ago)
        )
    )
    maintenance(database_url, EXPIRE_TASK_RUNS)

    retried_for = {
        ERROR_TYPE_HEADER: "StoreUnavailable",
        ERROR_MESSAGE_HEADER: "the store is unavailable: connection refused",
    }
    stored = store.run(
        store_batch,
        [letter(task_id, now, "retry_queue", **retried_for) for task_id in ("late", "prompt")],
    )
    late, prompt = (store.run(dead_letters.get, record_id) for record_id, _ in stored)
    assert late is not None
    assert prompt is not None
    assert (late.error_type, late.traceback) == ("CorruptFile", prompt.traceback)
    assert late.fingerprint == prompt.fingerprint


def test_retention_leaves_the_letters_a_running_redrive_has_yet_to_send(
    store: Store, database_url: str
) -> None:
    """A slow redrive of old letters: they passed the retention while pending, were purged, and
    the job failed each as an unknown letter — never re-published, though the operator asked."""
    now = utcnow()
    store.run(store_batch, [letter(f"t-{n}", now - timedelta(days=13)) for n in range(3)])
    job = store.run(redrives.create, Filters(queue="document_processing"), 0.1)
    store.run(lambda c: c.execute(update(letters_table).values(dead_at=now - timedelta(days=15))))

    assert maintenance(database_url, PURGE_DEAD_LETTERS) == 0
    assert len(store.run(redrives.pending, job.id, 10)) == 3

    store.run(redrives.cancel, job.id)  # nobody took it: cancelled at once
    assert maintenance(database_url, PURGE_DEAD_LETTERS) == 3, "the job ended: they go"


def test_a_letter_in_doubt_is_kept_as_long_as_an_unhandled_one(
    store: Store, database_url: str
) -> None:
    """Claimed for a re-publishing never recorded (it may or may not have gone out; the operator
    is told to re-publish it by hand if it did not), it was purged with the handled letters
    after 3 days, not the 14 of a letter nobody has handled."""
    now = utcnow()
    [(record_id, _)] = store.run(store_batch, [letter("t-doubt", now - timedelta(days=5))])
    read = store.run(dead_letters.get, record_id)
    assert read is not None
    assert store.run(dead_letters.claim, record_id, read.updated_at, now - timedelta(days=4))

    assert maintenance(database_url, PURGE_DEAD_LETTERS) == 0
    assert store.run(dead_letters.get, record_id) is not None


ON_POSTGRESQL = pytest.mark.parametrize(
    "database_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
"""PostgreSQL's recheck of a row a statement waited for (SQLite has one writer)."""


async def deleted_meanwhile(store: Store, revive: Callable[[Any], None], expire: Any) -> Any:
    """`revive` a due row in a transaction held open until `expire` (another connection) waits
    for its lock; then commit, and what `expire` returned."""
    with store.engine.connect() as connection:
        transaction = connection.begin()
        revive(connection)
        expiring = asyncio.ensure_future(asyncio.to_thread(store.run, expire))

        async def waiting() -> bool | None:
            statement = text(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND query ILIKE 'DELETE%' AND datname = current_database()"
            )
            return bool(store.run(lambda c: c.execute(statement).scalar_one())) or None

        try:
            await eventually(waiting, 10, "the expiry's DELETE to wait for the row's lock")
        finally:
            transaction.commit()
    return await expiring


@ON_POSTGRESQL
async def test_an_idempotency_key_taken_afresh_as_it_expires_is_kept(store: Store) -> None:
    """An upload took an expired key as its own (`claim_all`) while the expiry waited for the
    row: the expiry deleted it, and the client's retry made a second document."""
    now = utcnow()
    store.run(
        lambda c: c.execute(
            idempotency_keys.insert().values(
                key="k",
                sha256="a" * 64,
                document_id="d-old",
                task_id="t-old",
                created_at=now - timedelta(hours=25),
            )
        )
    )
    claim = idempotency.Claim("k", "b" * 64, "d-new", "t-new")

    expired = await deleted_meanwhile(
        store,
        lambda c: idempotency.claim_all(c, [claim], expired_before=now - idempotency.WINDOW),
        lambda c: idempotency.expire(c, utcnow() - idempotency.WINDOW, limit=5000),
    )

    assert expired == 0
    kept = store.run(lambda c: c.execute(select(idempotency_keys.c.document_id)).scalars().all())
    assert kept == ["d-new"]


@ON_POSTGRESQL
async def test_a_run_made_pending_again_as_it_expires_is_kept(store: Store) -> None:
    """Its letter re-published (`requeue`) while the expiry waited for the row: the expiry deleted
    it, GET /tasks/{id} was a 404 while its message waited, and reconciliation could never find
    it lost."""
    now = utcnow()
    store.run(task_runs.record_pending, "t-dead", PROCESS_DOCUMENT)
    store.run(task_runs.record_dead, [("t-dead", PROCESS_DOCUMENT, "rejected", "rejected by q")])
    two_hours_ago = now - timedelta(hours=2)
    store.run(
        lambda c: c.execute(
            update(runs_table).values(finished_at=two_hours_ago, updated_at=two_hours_ago)
        )
    )
    seen = store.run(task_runs.versions, {"t-dead"})["t-dead"]
    requeued = task_runs.Requeue("t-dead", PROCESS_DOCUMENT, "document_processing", seen)

    expired = await deleted_meanwhile(
        store,
        lambda c: task_runs.requeue(c, requeued),
        lambda c: task_runs.expire(
            c, utcnow() - timedelta(hours=1), failed_before=now - timedelta(days=14), limit=5000
        ),
    )

    assert expired == 0
    run = store.run(task_runs.get, "t-dead")
    assert run is not None
    assert run.state == "PENDING"


def test_a_tick_whose_publish_rabbitmq_refuses_is_skipped_not_failed(
    store: Store, database_url: str
) -> None:
    """The sweeper's publish met RabbitMQ down: the error went through to Celery, which recorded
    the tick failed and rejected it — a dead letter of maintenance, counted as a failure, that an
    operator could redrive. Skipped now, as when the store is down; its document waits for the
    next tick."""
    document_id = add_document(store, b"accepted, never confirmed", "unconfirmed.txt")
    store.run(
        lambda c: c.execute(
            update(documents_table)
            .where(documents_table.c.id == document_id)
            .values(updated_at=utcnow() - timedelta(minutes=5))
        )
    )
    refused = Settings(
        database_url=database_url, broker_url=f"amqp://guest:guest@127.0.0.1:{free_port()}//"
    )
    app = create_celery(refused)
    try:
        assert app.tasks[PUBLISH_UNPUBLISHED].run() == 0, "skipped: the next run does it"
    finally:
        app.close()
    found = store.run(documents.get, document_id)
    assert found is not None
    assert found.published_at is None
