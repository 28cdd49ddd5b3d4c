from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy import text

from service.store.database import AsyncStore, Store
from service.store.schema import metadata


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each store test runs against SQLite and PostgreSQL, on a freshly migrated, empty schema."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'docproc.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    store = Store(url)
    store.migrate()
    with store.engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            tables = ", ".join(table.name for table in metadata.sorted_tables)
            connection.execute(text(f"TRUNCATE {tables} CASCADE"))
    store.close()
    return url


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    store = Store(database_url)
    yield store
    store.close()


@pytest_asyncio.fixture(loop_scope="session")
async def async_store(database_url: str) -> AsyncIterator[AsyncStore]:
    store = AsyncStore(database_url)
    yield store
    await store.close()
