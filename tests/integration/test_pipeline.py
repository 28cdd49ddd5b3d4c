"""Documents through a real worker and DLQ consumer on a real broker, on both stores: they end
searchable, or dead with their reason, and their task state tells where they are."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import pytest_asyncio
from litestar.testing import AsyncTestClient
from sqlalchemy import text

from service.api.app import create_app
from service.api.routes.documents import accept
from service.store import documents, search, task_runs
from service.store.database import Store
from service.store.migrations import upgrade
from service.store.task_runs import TaskRun
from service.tasks import PROCESS_DOCUMENT
from service.worker import canary
from service.worker.app import DocprocCelery, create_celery
from tests import corpus
from tests.support import (
    Process,
    RabbitMQ,
    Vhost,
    create_vhost,
    delete_vhost,
    eventually,
    run_docproc,
    start_dlq,
    start_worker,
)

pytestmark = [pytest.mark.rabbitmq, pytest.mark.worker]

WORKER_ENV = {
    "CELERY_MAX_RETRIES": "3",
    "CELERY_RETRY_DELAY": "1",
    "CELERY_RETRY_BACKOFF_MAX": "30",
}


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('store') / 'docproc.db'}"
        upgrade(url)
        yield url
        return
    session_url: str = request.getfixturevalue("postgres_url")
    admin = session_url.rsplit("/", 1)[0] + "/postgres"
    name = f"docproc_e2e_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    url = session_url.rsplit("/", 1)[0] + f"/{name}"
    upgrade(url)
    yield url
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class Deployment:
    vhost: Vhost
    url: str
    worker: Process
    dlq: Process
    client: DocprocCelery
    store: Store

    def env(self) -> dict[str, str]:
        return {"DOCPROC_DATABASE_URL": self.url, **WORKER_ENV}

    def submit(self, content: bytes, filename: str) -> tuple[str, str]:
        """Accept a document straight into the store and send its task (no API: the API would
        refuse some of what these tests need the worker to see)."""
        document_id, task_id = str(uuid.uuid4()), str(uuid.uuid4())
        self.store.run(
            accept,
            document_id=document_id,
            task_id=task_id,
            filename=filename,
            content_type=None,
            content=content,
            sha256=hashlib.sha256(content).hexdigest(),
            correlation_id=task_id,
        )
        self.client.send_task(
            PROCESS_DOCUMENT, kwargs={"document_id": document_id}, task_id=task_id
        )
        return document_id, task_id

    async def finished(self, task_id: str, timeout: float = 60) -> TaskRun:
        async def probe() -> TaskRun | None:
            run = self.store.run(task_runs.get, task_id)
            return run if run is not None and run.state in ("SUCCESS", "DEAD") else None

        return await eventually(probe, timeout, f"task {task_id} to finish")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def deployment(
    rabbitmq: RabbitMQ, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Deployment]:
    name = await create_vhost(rabbitmq)
    vhost = Vhost(rabbitmq, name, {"DOCPROC_DATABASE_URL": database_url, **WORKER_ENV})
    logs = Path(tmp_path_factory.mktemp("deployment"))
    declared = await asyncio.to_thread(run_docproc, "topology", "declare", env=vhost.env())
    assert declared.returncode == 0, declared.stderr
    worker = await start_worker(vhost, logs / "worker.log", **WORKER_ENV)
    dlq = await start_dlq(vhost, logs / "dlq.log")
    client = create_celery(vhost.settings())
    store = Store(database_url)
    try:
        yield Deployment(vhost, database_url, worker, dlq, client, store)
    finally:
        worker.stop()
        dlq.stop()
        client.close()
        store.close()
        await delete_vhost(rabbitmq, name)


async def test_a_corpus_of_every_format_ends_searchable_without_markup(
    deployment: Deployment,
) -> None:
    samples = {
        name: sample
        for name, sample in corpus.all_samples().items()
        if name
        in (
            "pdf_sample",
            "docx_sample",
            "html_sample",
            "utf16_text_sample",
            "cp1252_text_sample",
            "markdown_sample",
        )
    }
    assert len(samples) == 6, sorted(corpus.all_samples())
    submitted = {
        name: deployment.submit(sample.data, sample.filename) for name, sample in samples.items()
    }

    for name, (document_id, task_id) in submitted.items():
        run = await deployment.finished(task_id)
        assert run.state == "SUCCESS", (name, run.error_type, run.error_message)
        document = deployment.store.run(documents.get, document_id)
        assert document is not None
        assert document.detected_type == samples[name].detected_type
        assert document.chunk_count
    for name, sample in samples.items():
        document_id = submitted[name][0]
        for phrase in sample.present:
            hits = deployment.store.run(search.search, phrase, 50)
            assert document_id in {hit.document_id for hit in hits}, (name, phrase)
        stored_text = deployment.store.run(documents.get_text, document_id) or ""
        for phrase in sample.absent:
            assert phrase not in stored_text, (name, phrase)
            if phrase.endswith("_SHOULD_NOT_APPEAR"):  # script, style, ... text is not indexed
                hits = deployment.store.run(search.search, phrase.replace("_", " "), 50)
                assert document_id not in {hit.document_id for hit in hits}, (name, phrase)


@pytest.mark.parametrize(
    ("sample", "error_type"),
    [
        (corpus.corrupt_pdf_sample, "CorruptFile"),
        (corpus.unsupported_binary_sample, "UnsupportedType"),
    ],
)
async def test_a_document_that_cannot_be_processed_is_dead_at_once(
    deployment: Deployment, sample: Any, error_type: str
) -> None:
    built = sample()
    _, task_id = deployment.submit(built.data, built.filename)

    run = await deployment.finished(task_id)

    assert run.state == "DEAD"
    assert run.error_type == error_type
    assert run.retries == 0
    assert run.retry_history == []


def _inject_index_failure(store: Store, prefix: str) -> None:
    trigger = f"inject_{prefix}"
    with store.engine.begin() as connection:
        if connection.dialect.name == "sqlite":
            connection.execute(
                text(
                    f"CREATE TRIGGER {trigger} BEFORE INSERT ON chunks WHEN (SELECT filename FROM "
                    f"documents WHERE id = NEW.document_id) LIKE '{prefix}-%' "
                    "BEGIN SELECT RAISE(ABORT, 'injected: the index is unavailable'); END"
                )
            )
        else:
            connection.execute(
                text(
                    f"CREATE FUNCTION {trigger}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                    "IF (SELECT filename FROM documents WHERE id = NEW.document_id) "
                    f"LIKE '{prefix}-%' THEN RAISE EXCEPTION 'injected: the index is unavailable' "
                    "USING ERRCODE = '40001'; "
                    "END IF; RETURN NEW; END $$"
                )
            )
            connection.execute(
                text(
                    f"CREATE TRIGGER {trigger} BEFORE INSERT ON chunks FOR EACH ROW "
                    f"EXECUTE FUNCTION {trigger}()"
                )
            )


def _clear_index_failure(store: Store, prefix: str) -> None:
    trigger = f"inject_{prefix}"
    with store.engine.begin() as connection:
        if connection.dialect.name == "sqlite":
            connection.execute(text(f"DROP TRIGGER {trigger}"))
        else:
            connection.execute(text(f"DROP TRIGGER {trigger} ON chunks"))
            connection.execute(text(f"DROP FUNCTION {trigger}()"))


async def test_a_transient_index_failure_retries_with_growing_delays_and_then_succeeds(
    deployment: Deployment,
) -> None:
    _inject_index_failure(deployment.store, "flaky")
    try:
        _, task_id = deployment.submit(b"A lighthouse stands on the rocks.", "flaky-note.txt")

        async def retried_twice() -> TaskRun | None:
            run = deployment.store.run(task_runs.get, task_id)
            return run if run is not None and run.retries >= 2 else None

        await eventually(retried_twice, 30, "two retries")
    finally:
        _clear_index_failure(deployment.store, "flaky")

    run = await deployment.finished(task_id)

    assert run.state == "SUCCESS"
    delays = [entry.delay for entry in run.retry_history]
    assert len(delays) >= 2
    assert delays == sorted(delays), "backoff never shrinks"
    assert all(entry.error_type == "DatabaseError" for entry in run.retry_history)
    times = [entry.at for entry in run.retry_history]
    assert all(b > a for a, b in itertools.pairwise(times))


async def test_a_transient_failure_that_never_clears_is_dead_after_exactly_max_retries(
    deployment: Deployment,
) -> None:
    _inject_index_failure(deployment.store, "broken")
    try:
        _, task_id = deployment.submit(b"The index will never take this one.", "broken-note.txt")
        run = await deployment.finished(task_id, timeout=90)
    finally:
        _clear_index_failure(deployment.store, "broken")

    assert run.state == "DEAD"
    assert run.retries == 3
    assert [entry.delay for entry in run.retry_history] == sorted(
        e.delay for e in run.retry_history
    )
    assert len(run.retry_history) == 3
    assert run.error_type == "DatabaseError"
    assert "injected" in (run.error_message or "")


async def test_a_worker_process_killed_mid_document_leaves_exactly_one_set_of_chunks(
    deployment: Deployment,
) -> None:
    big = corpus.pdf_sample(pages=150)
    document_id, task_id = deployment.submit(big.data, "big.pdf")

    async def extracting() -> bool | None:
        run = deployment.store.run(task_runs.get, task_id)
        return True if run is not None and run.step == "extract" else None

    await eventually(extracting, 30, "the extraction to start", interval=0.02)
    for pid in deployment.worker.children():
        os.kill(pid, signal.SIGKILL)

    run = await deployment.finished(task_id, timeout=120)

    assert run.state == "SUCCESS"
    document = deployment.store.run(documents.get, document_id)
    assert document is not None
    positions = deployment.store.run(
        lambda c: [
            row[0]
            for row in c.execute(
                text("SELECT position FROM chunks WHERE document_id = :d ORDER BY position"),
                {"d": document_id},
            )
        ]
    )
    assert positions == list(range(document.chunk_count or 0))
    assert positions, "the document has chunks"


async def test_progress_is_seen_rising_in_processing_before_success(deployment: Deployment) -> None:
    result = deployment.client.send_task(canary.STEPS, kwargs={"count": 4, "seconds": 0.4})
    seen: list[tuple[str, float]] = []

    async def done() -> bool | None:
        run = deployment.store.run(task_runs.get, result.id)
        if run is not None and (not seen or seen[-1] != (run.state, run.percent)):
            seen.append((run.state, run.percent))
        return True if run is not None and run.state == "SUCCESS" else None

    await eventually(done, 30, "the steps canary", interval=0.05)

    processing = [percent for state, percent in seen if state == "PROCESSING"]
    assert processing == sorted(processing)
    assert len(set(processing)) >= 3
    assert seen[-1] == ("SUCCESS", 100.0)


async def test_through_the_api_a_document_goes_pending_processing_success_and_is_found(
    deployment: Deployment,
) -> None:
    big = corpus.pdf_sample(pages=40)
    async with AsyncTestClient(create_app(deployment.vhost.settings())) as client:
        response = await client.post(
            "/documents", files={"file": ("report.pdf", big.data, "application/pdf")}
        )
        assert response.status_code == 202
        task_id = response.json()["task_id"]
        states: list[str] = [response.json()["status"]]  # as committed before the 202

        async def success() -> bool | None:
            state = (await client.get(f"/tasks/{task_id}/status")).json()["state"]
            if not states or states[-1] != state:
                states.append(state)
            return True if state in ("SUCCESS", "DEAD") else None

        await eventually(success, 60, "the upload to be processed", interval=0.02)
        hits = (await client.get("/search", params={"q": big.present[0]})).json()["items"]

    assert states[0] == "PENDING"
    assert "PROCESSING" in states
    assert states[-1] == "SUCCESS"
    assert response.json()["document_id"] in {hit["document_id"] for hit in hits}
