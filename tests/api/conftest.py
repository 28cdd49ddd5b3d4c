from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest
import pytest_asyncio
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy import text

from service.api.app import create_app
from service.settings import Settings
from service.store.database import AsyncStore, Store
from service.store.migrations import upgrade
from tests.support import RabbitMQ, Vhost, create_vhost, delete_vhost, run_docproc

pytestmark = pytest.mark.rabbitmq

Client = AsyncTestClient[Litestar]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def api_vhost(rabbitmq: RabbitMQ) -> AsyncIterator[Vhost]:
    name = await create_vhost(rabbitmq)
    vhost = Vhost(rabbitmq, name)
    declared = await asyncio.to_thread(run_docproc, "topology", "declare", env=vhost.env())
    assert declared.returncode == 0, declared.stderr
    try:
        yield vhost
    finally:
        await delete_vhost(rabbitmq, name)


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'docproc.db'}"
    upgrade(url)
    return url


@pytest.fixture
def settings_for(api_vhost: Vhost, database_url: str) -> Callable[..., Settings]:
    def make(**overrides: str) -> Settings:
        return api_vhost.settings(DOCPROC_DATABASE_URL=database_url, **overrides)

    return make


@pytest_asyncio.fixture(loop_scope="session")
async def client(settings_for: Callable[..., Settings]) -> AsyncIterator[Client]:
    async with AsyncTestClient(create_app(settings_for())) as test_client:
        yield test_client


@pytest.fixture
def store(database_url: str) -> Store:
    return Store(database_url)


@pytest_asyncio.fixture(loop_scope="session")
async def channel(api_vhost: Vhost) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    connection = await api_vhost.connect()
    async with connection:
        channel = await connection.channel()
        for name in ("document_processing", "retry_queue", "celery", "docproc.dead_letter"):
            await (await channel.get_queue(name, ensure=False)).purge()
        yield channel


async def take(
    channel: aio_pika.abc.AbstractChannel, queue: str, timeout: float = 10
) -> aio_pika.abc.AbstractIncomingMessage:
    """The next message of `queue`, waiting for it with a deadline."""
    from tests.support import eventually

    source = await channel.get_queue(queue, ensure=False)

    async def probe() -> Any:
        return await source.get(no_ack=True, fail=False)

    message: aio_pika.abc.AbstractIncomingMessage = await eventually(
        probe, timeout, f"a message in {queue}"
    )
    return message


async def queued(channel: aio_pika.abc.AbstractChannel, queue: str) -> int:
    """Messages ready in `queue` now."""
    declared = await channel.declare_queue(queue, passive=True)
    count = declared.declaration_result.message_count
    assert count is not None
    return count


__all__ = ["AsyncStore", "Client", "queued", "take"]


@contextlib.contextmanager
def refused_updates(
    store: Store, table: str, column: str | None = None
) -> Iterator[Callable[[], None]]:
    """The store refuses every UPDATE of `table` (of its `column`, when named), as a store that
    fails for a moment would — a SQLite trigger — until the `lift` it yields is called, or the
    block ends."""
    name = f"refuse_{table}_{column or 'rows'}"
    of = f" OF {column}" if column else ""
    store.run(
        lambda c: c.execute(
            text(
                f"CREATE TRIGGER {name} BEFORE UPDATE{of} ON {table} "
                "BEGIN SELECT RAISE(ABORT, 'injected: the store is unavailable'); END"
            )
        )
    )

    def lift() -> None:
        store.run(lambda c: c.execute(text(f"DROP TRIGGER IF EXISTS {name}")))

    try:
        yield lift
    finally:
        lift()
