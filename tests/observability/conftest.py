"""A running deployment of real processes — API, worker (serving its work metrics) and DLQ
consumer — on a vhost and SQLite store of its own, for the observability tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from service.store.migrations import upgrade
from service.worker.app import DocprocCelery, create_celery
from tests.support import (
    Api,
    Process,
    RabbitMQ,
    Vhost,
    create_vhost,
    delete_vhost,
    eventually,
    free_port,
    run_docproc,
    start_api,
    start_dlq,
    start_worker,
)

pytestmark = [pytest.mark.rabbitmq, pytest.mark.worker]

WORKER_ENV = {"CELERY_RETRY_DELAY": "1", "CELERY_RETRY_BACKOFF_MAX": "2"}


@dataclass
class Stack:
    vhost: Vhost
    api: Api
    worker: Process
    dlq: Process
    worker_metrics: str
    celery: DocprocCelery
    logs: Path

    async def upload(self, content: bytes, filename: str) -> str:
        """Upload through the API; the task id."""
        async with httpx.AsyncClient(base_url=self.api.url, timeout=10) as http:
            answer = await http.post("/documents", files={"file": (filename, content)})
        assert answer.status_code == 202, answer.text
        task_id: str = answer.json()["task_id"]
        return task_id

    async def state(self, task_id: str, *states: str, timeout: float = 60) -> dict[str, object]:
        """The task's status once it is in one of `states`."""

        async def probe() -> dict[str, object] | None:
            async with httpx.AsyncClient(base_url=self.api.url, timeout=5) as http:
                answer = await http.get(f"/tasks/{task_id}/status")
            status: dict[str, object] = answer.json() if answer.status_code == 200 else {}
            return status if status.get("state") in states else None

        return await eventually(probe, timeout, f"task {task_id} to be {'/'.join(states)}")


@contextlib.asynccontextmanager
async def running_stack(rabbitmq: RabbitMQ, logs: Path, **env: str) -> AsyncIterator[Stack]:
    """API, worker and DLQ consumer on a fresh vhost and SQLite store, `env` in each."""
    database_url = f"sqlite:///{logs / 'docproc.db'}"
    upgrade(database_url)
    name = await create_vhost(rabbitmq)
    vhost = Vhost(rabbitmq, name, {"DOCPROC_DATABASE_URL": database_url, **env})
    declared = await asyncio.to_thread(run_docproc, "topology", "declare", env=vhost.env())
    assert declared.returncode == 0, declared.stderr
    port = free_port()
    started: list[Process] = []
    try:
        worker = await start_worker(
            vhost, logs / "worker.log", DOCPROC_WORKER_METRICS_PORT=str(port), **WORKER_ENV
        )
        started.append(worker)
        dlq = await start_dlq(vhost, logs / "dlq.log")
        started.append(dlq)
        api = await start_api(vhost, logs / "api.log")
        started.append(api.process)
        celery = create_celery(vhost.settings())
        try:
            yield Stack(vhost, api, worker, dlq, f"http://127.0.0.1:{port}", celery, logs)
        finally:
            celery.close()
    finally:
        for process in reversed(started):
            process.stop()
        await delete_vhost(rabbitmq, name)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(
    rabbitmq: RabbitMQ, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    async with running_stack(rabbitmq, Path(tmp_path_factory.mktemp("stack"))) as running:
        yield running
