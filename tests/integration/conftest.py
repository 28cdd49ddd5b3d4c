from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aio_pika
import pytest
import pytest_asyncio

from service.worker.app import DocprocCelery, create_celery
from tests.support import (
    FAST_WORKER_ENV,
    DeadLetterQueue,
    Process,
    RabbitMQ,
    Reports,
    Vhost,
    create_vhost,
    delete_vhost,
    run_docproc,
    start_worker,
    topology_vhost,
)


@pytest_asyncio.fixture(loop_scope="session")
async def vhost(rabbitmq: RabbitMQ, tmp_path: Path) -> AsyncIterator[Vhost]:
    """A vhost for one test, with the topology declared and a SQLite store in its tmp_path."""
    vhost = await topology_vhost(rabbitmq, f"sqlite:///{tmp_path / 'docproc.db'}")
    try:
        yield vhost
    finally:
        await delete_vhost(rabbitmq, vhost.name)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def work_vhost(rabbitmq: RabbitMQ) -> AsyncIterator[Vhost]:
    """A vhost for one test module, with the topology declared."""
    name = await create_vhost(rabbitmq)
    vhost = Vhost(rabbitmq, name)
    declared = run_docproc("topology", "declare", env=vhost.env())
    assert declared.returncode == 0, declared.stderr
    try:
        yield vhost
    finally:
        await delete_vhost(rabbitmq, name)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def worker(
    work_vhost: Vhost, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Process]:
    log = Path(tmp_path_factory.mktemp("worker")) / "worker.log"
    process = await start_worker(work_vhost, log)
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def client(work_vhost: Vhost) -> Iterator[DocprocCelery]:
    """A Celery client configured like the worker (the way docproc's own code sends tasks)."""
    app = create_celery(work_vhost.settings(**FAST_WORKER_ENV))
    yield app
    app.close()


@pytest_asyncio.fixture(loop_scope="session")
async def connection(work_vhost: Vhost) -> AsyncIterator[aio_pika.abc.AbstractConnection]:
    connection = await work_vhost.connect()
    async with connection:
        yield connection


@pytest_asyncio.fixture(loop_scope="session")
async def reports(connection: aio_pika.abc.AbstractConnection) -> Reports:
    return await Reports.open(connection)


@pytest_asyncio.fixture(loop_scope="session")
async def dead_letters(connection: aio_pika.abc.AbstractConnection) -> DeadLetterQueue:
    return DeadLetterQueue(await connection.channel())


# A whole deployment (worker + DLQ consumer, on SQLite and on PostgreSQL), per test module.
from tests.deployment import Deployment, database_url, deployment  # noqa: E402

__all__ = ["Deployment", "database_url", "deployment"]
