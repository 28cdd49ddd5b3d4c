"""A store outage waits, it does not fail: the worker stops taking work and resumes by itself,
tasks caught in it spend none of their retries, maintenance skips a beat — nothing is lost."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from service.intake import Upload, accept
from service.settings import Settings
from service.store import dead_letters, task_runs
from service.store.database import Store
from service.store.dead_letters import Filters
from service.task_contract import CANARY_FAIL, EXPIRE_TASK_RUNS, PROCESS_DOCUMENT
from service.topology import DOCUMENT_QUEUE
from service.worker.app import create_celery
from tests.store.test_document_task_writes import accepted
from tests.support import (
    RabbitMQ,
    ScratchDatabase,
    Vhost,
    all_succeeded,
    create_vhost,
    delete_vhost,
    eventually,
    run_docproc,
    start_dlq,
    start_worker,
)

pytestmark = [pytest.mark.rabbitmq, pytest.mark.postgres, pytest.mark.worker]

ENV = {"CELERY_MAX_RETRIES": "1", "CELERY_RETRY_DELAY": "1", "CELERY_RETRY_BACKOFF_MAX": "2"}


@pytest.fixture
def database(postgres_url: str) -> Iterator[ScratchDatabase]:
    database = ScratchDatabase(postgres_url.rsplit("/", 1)[0] + "/postgres", "docproc_outage")
    database.create()
    try:
        yield database
    finally:
        database.drop()


@pytest_asyncio.fixture(loop_scope="session")
async def vhost(rabbitmq: RabbitMQ, database: ScratchDatabase) -> AsyncIterator[Vhost]:
    name = await create_vhost(rabbitmq)
    vhost = Vhost(rabbitmq, name, {"DOCPROC_DATABASE_URL": database.url, **ENV})
    declared = await asyncio.to_thread(run_docproc, "topology", "declare", env=vhost.env())
    assert declared.returncode == 0, declared.stderr
    try:
        yield vhost
    finally:
        await delete_vhost(rabbitmq, name)


def accept_documents(store: Store, count: int) -> list[tuple[str, str]]:
    accepted = []
    for n in range(count):
        content = f"Document {n} waits for the store to come back.".encode()
        document_id, task_id = str(uuid.uuid4()), str(uuid.uuid4())
        upload = Upload(
            filename=f"outage-{n}.txt",
            content_type="text/plain",
            content=content,
            sha256=hashlib.sha256(content).hexdigest(),
            correlation_id=task_id,
        )
        store.run(accept, upload, document_id, task_id)
        accepted.append((document_id, task_id))
    return accepted


async def test_a_store_outage_pauses_the_worker_spends_no_retries_and_loses_nothing(
    vhost: Vhost, database: ScratchDatabase, tmp_path: Path
) -> None:
    worker = await start_worker(vhost, tmp_path / "worker.log", **ENV)
    dlq = await start_dlq(vhost, tmp_path / "dlq.log")
    store = Store(database.url)
    client = create_celery(vhost.settings())
    try:
        caught, queued = accept_documents(store, 3), accept_documents(store, 2)
        store.close()
        database.block()
        for document_id, task_id in caught:  # taken at once, before the worker notices
            client.send_task(PROCESS_DOCUMENT, kwargs={"document_id": document_id}, task_id=task_id)

        async def paused() -> bool | None:
            async with vhost.management() as management:
                queue = await management.queue(DOCUMENT_QUEUE)
            said = "taking no new work" in worker.output()
            return True if said and queue is not None and queue.consumers == 0 else None

        await eventually(paused, 30, "the worker to stop taking work")
        for document_id, task_id in queued:  # these wait in their queue
            client.send_task(PROCESS_DOCUMENT, kwargs={"document_id": document_id}, task_id=task_id)
        await eventually(
            lambda: asyncio.sleep(0, True if worker.output().count("waits") >= 4 else None),
            30,
            "the caught tasks to wait for the store more often than their one retry allows",
        )
        assert worker.alive()
        database.unblock()

        task_ids = [task_id for _, task_id in caught + queued]
        await eventually(
            all_succeeded(store, task_ids), 90, "every document to be processed", interval=0.5
        )
        assert "the store answers again" in worker.output()
        runs = [store.run(task_runs.get, task_id) for _, task_id in caught + queued]
        assert [run.retries for run in runs if run is not None] == [0] * 5, "no budget spent"
        assert store.run(dead_letters.page, Filters(status="all"), limit=10).items == []
    finally:
        client.close()
        store.close()
        worker.stop()
        dlq.stop()


async def test_a_failure_met_in_an_outage_is_recorded_as_itself_before_its_letter_is_stored(
    vhost: Vhost, database: ScratchDatabase, tmp_path: Path
) -> None:
    """The failure waits for the store in its retry's headers. That retry, arriving while the
    store was still away, was dead-lettered without waiting; arriving after, it was not recorded
    either: the run said `rejected by retry_queue`, not the task's own failure."""
    worker = await start_worker(vhost, tmp_path / "worker.log", **ENV)
    dlq = await start_dlq(vhost, tmp_path / "dlq.log")
    store = Store(database.url)
    client = create_celery(vhost.settings())
    task_id = str(uuid.uuid4())
    try:
        store.run(task_runs.record_pending, task_id, CANARY_FAIL)
        store.close()
        database.block()
        client.send_task(CANARY_FAIL, task_id=task_id)
        await eventually(
            lambda: asyncio.sleep(0, True if worker.output().count("waits") >= 2 else None),
            30,
            "the failure to wait for the store twice",
        )
        database.unblock()

        async def dead() -> task_runs.TaskRun | None:
            run = store.run(task_runs.get, task_id)
            stored = store.run(dead_letters.page, Filters(status="all"), limit=10).items
            return run if run is not None and run.state == "DEAD" and stored else None

        run = await eventually(dead, 60, "the task to be DEAD and its letter stored")
        assert (run.error_type, run.error_message) == (
            "CanaryFailure",
            "canary: a permanent failure, on purpose",
        )
        [letter] = store.run(dead_letters.page, Filters(status="all"), limit=10).items
        assert letter.error_type == "CanaryFailure"
        assert worker.alive()
    finally:
        client.close()
        store.close()
        worker.stop()
        dlq.stop()


async def test_a_corrupt_file_whose_first_attempt_met_an_outage_is_dead_for_being_corrupt(
    vhost: Vhost, database: ScratchDatabase, tmp_path: Path
) -> None:
    """Attempt one waits for the store through retry_queue, its headers saying StoreUnavailable;
    attempt two, the store back, finds the file corrupt. The run said CorruptFile, its dead
    letter the outage — grouped with the outage's letters, whose redrive would send a corrupt
    file round again."""
    worker = await start_worker(vhost, tmp_path / "worker.log", **ENV)
    dlq = await start_dlq(vhost, tmp_path / "dlq.log")
    store = Store(database.url)
    client = create_celery(vhost.settings())
    try:
        document_id, task_id = accepted(
            store,
            b"%PDF-1.4\nthis is not really a pdf at all\n",
            "scan.pdf",
            "application/pdf",
        )
        store.close()
        database.block()
        client.send_task(PROCESS_DOCUMENT, kwargs={"document_id": document_id}, task_id=task_id)
        await eventually(
            lambda: asyncio.sleep(0, True if "waits" in worker.output() else None),
            30,
            "the task to wait for the store",
        )
        database.unblock()

        async def dead() -> task_runs.TaskRun | None:
            run = store.run(task_runs.get, task_id)
            letter = store.run(dead_letters.latest_for_task, task_id)
            return run if run is not None and run.state == "DEAD" and letter else None

        run = await eventually(dead, 90, "the task to be DEAD with its letter", interval=0.5)
        [letter] = store.run(dead_letters.page, Filters(status="all"), limit=10).items
        assert run.error_type == "CorruptFile"
        assert (letter.error_type, letter.reason) == ("CorruptFile", "rejected")
    finally:
        client.close()
        store.close()
        worker.stop()
        dlq.stop()


def test_maintenance_that_meets_an_outage_skips_instead_of_failing(
    database: ScratchDatabase,
) -> None:
    app = create_celery(Settings(database_url=database.url))
    database.block()

    assert app.tasks[EXPIRE_TASK_RUNS].run() == 0, "skipped: the next run does it"
