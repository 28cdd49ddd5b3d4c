"""HTTP-level tests: the API on a SQLite store with a recording publisher — no broker, no
PostgreSQL. What RabbitMQ does with the messages is tested against RabbitMQ (tests/api,
tests/integration)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio
from litestar import Litestar
from litestar.testing import AsyncTestClient

from service.api.app import create_app
from service.settings import Settings
from service.store.database import Store
from service.store.migrations import upgrade
from tests.support import RecordingPublisher, free_port

Client = AsyncTestClient[Litestar]


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'docproc.db'}"
    upgrade(url)
    return url


@pytest.fixture
def settings_for(database_url: str) -> Callable[..., Settings]:
    """Settings on this test's store, with a broker and a management API that do not answer."""

    def make(**overrides: str) -> Settings:
        nowhere = free_port()
        values = {
            "DOCPROC_DATABASE_URL": database_url,
            "DOCPROC_BROKER_URL": f"amqp://guest:guest@127.0.0.1:{nowhere}//",
            "DOCPROC_MANAGEMENT_URL": f"http://127.0.0.1:{nowhere}",
        }
        return Settings.from_env(values | overrides)

    return make


@pytest.fixture
def publisher() -> RecordingPublisher:
    return RecordingPublisher()


@pytest_asyncio.fixture(loop_scope="session")
async def client(
    settings_for: Callable[..., Settings], publisher: RecordingPublisher
) -> AsyncIterator[Client]:
    async with AsyncTestClient(create_app(settings_for(), publisher=publisher)) as test_client:
        yield test_client


@pytest.fixture
def store(database_url: str) -> Store:
    return Store(database_url)
