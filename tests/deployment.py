"""A whole deployment for tests: a vhost, a store (SQLite or PostgreSQL), a real worker and a
real DLQ consumer, and a way to submit documents straight into it."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import pytest_asyncio
from sqlalchemy import text

from service.intake import Upload, accept
from service.store import task_runs
from service.store.database import Store
from service.store.migrations import upgrade
from service.store.task_runs import TaskRun
from service.task_contract import PROCESS_DOCUMENT
from service.worker.app import DocprocCelery, create_celery
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
        upload = Upload(
            filename=filename,
            content_type=None,
            content=content,
            sha256=hashlib.sha256(content).hexdigest(),
            correlation_id=task_id,
        )
        self.store.run(accept, upload, document_id, task_id)
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


def inject_index_failure(store: Store, prefix: str) -> None:
    """Make the index step fail, for real, for documents whose filename starts with `prefix-`:
    a trigger aborts the chunk insert (SQLite) or raises a serialization failure (PostgreSQL)."""
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


def clear_index_failure(store: Store, prefix: str) -> None:
    trigger = f"inject_{prefix}"
    with store.engine.begin() as connection:
        if connection.dialect.name == "sqlite":
            connection.execute(text(f"DROP TRIGGER {trigger}"))
        else:
            connection.execute(text(f"DROP TRIGGER {trigger} ON chunks"))
            connection.execute(text(f"DROP FUNCTION {trigger}()"))
