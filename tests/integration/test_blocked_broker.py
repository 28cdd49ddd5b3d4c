"""With RabbitMQ blocked by a memory alarm, the API stays responsive, uploads are accepted within
their timeout, and once the alarm clears every accepted document is processed — none lost, none
twice."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from litestar.testing import AsyncTestClient
from sqlalchemy import text

from service.api.app import create_app
from service.broker.publisher import PUBLISH_TIMEOUT
from service.store import task_runs
from service.store.database import Store
from service.store.migrations import upgrade
from service.tasks import PUBLISH_UNPUBLISHED
from service.worker.app import create_celery
from tests.support import (
    Process,
    RabbitMQ,
    Vhost,
    create_vhost,
    delete_vhost,
    eventually,
    rabbitmqctl_on,
    run_docproc,
    start_worker,
)

pytestmark = [pytest.mark.rabbitmq, pytest.mark.worker]

DOCUMENTS = 5


@pytest.fixture
def memory_alarm(rabbitmq: RabbitMQ) -> Iterator[Callable[..., None]]:
    """Blocks every publisher of the local node; always cleared afterwards."""
    rabbitmqctl = rabbitmqctl_on(rabbitmq)
    rabbitmqctl("set_vm_memory_high_watermark", "0")
    try:
        yield rabbitmqctl
    finally:
        rabbitmqctl("set_vm_memory_high_watermark", "0.4")


@pytest_asyncio.fixture(loop_scope="session")
async def vhost(rabbitmq: RabbitMQ, tmp_path: Path) -> AsyncIterator[Vhost]:
    name = await create_vhost(rabbitmq)
    url = f"sqlite:///{tmp_path / 'docproc.db'}"
    upgrade(url)
    vhost = Vhost(rabbitmq, name, {"DOCPROC_DATABASE_URL": url})
    declared = await asyncio.to_thread(run_docproc, "topology", "declare", env=vhost.env())
    assert declared.returncode == 0, declared.stderr
    try:
        yield vhost
    finally:
        await delete_vhost(rabbitmq, name)


async def test_a_blocked_broker_loses_nothing_and_processes_nothing_twice(
    vhost: Vhost, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    worker: Process = await start_worker(vhost, tmp_path / "worker.log")
    settings = vhost.settings()
    store = Store(settings.resolved_database_url)
    accepted: list[str] = []
    try:
        async with AsyncTestClient(create_app(settings)) as api:
            rabbitmqctl = request.getfixturevalue("memory_alarm")

            started = time.monotonic()
            health = await api.get("/health")
            assert time.monotonic() - started < 0.1
            assert health.status_code == 200
            for n in range(DOCUMENTS):
                started = time.monotonic()
                response = await api.post(
                    "/documents",
                    files={
                        "file": (f"blocked-{n}.txt", f"Document {n} waits out the alarm.".encode())
                    },
                )
                took = time.monotonic() - started
                assert response.status_code == 202, response.text
                assert took < PUBLISH_TIMEOUT + 2, f"the upload took {took:.1f} s"
                assert response.json()["queued"] is False
                accepted.append(response.json()["task_id"])
                started = time.monotonic()
                assert (await api.get("/health")).status_code == 200
                assert time.monotonic() - started < 0.1

            rabbitmqctl("set_vm_memory_high_watermark", "0.4")
            # Beat's sweeper, run now instead of waiting: what was never confirmed is published.
            store.run(
                lambda c: c.execute(
                    text("UPDATE documents SET created_at = :past WHERE published_at IS NULL"),
                    {"past": "2000-01-01 00:00:00"},
                )
            )
            client = create_celery(settings)
            try:
                client.send_task(PUBLISH_UNPUBLISHED)
            finally:
                client.close()

            async def all_done() -> bool | None:
                runs = [store.run(task_runs.get, task_id) for task_id in accepted]
                return True if all(r is not None and r.state == "SUCCESS" for r in runs) else None

            await eventually(all_done, 60, "every accepted document to be processed")
    finally:
        worker.stop()
        store.close()

    processed = re.findall(
        r"docproc\.document\.process\[([0-9a-f-]+)\] succeeded[^\n]*'chunks'", worker.output()
    )
    assert sorted(processed) == sorted(accepted), "each document processed exactly once"
