"""The harness itself: each session gets a fresh vhost and a fresh database."""

from __future__ import annotations

import psycopg
import pytest

from tests.support import Vhost


@pytest.mark.rabbitmq
async def test_the_session_vhost_is_fresh_and_ours(broker: Vhost) -> None:
    async with broker.management() as management:
        queues = await management.queues()
        whoami = await management.overview()
    assert queues == []
    assert whoami["rabbitmq_version"]


@pytest.mark.postgres
def test_the_session_database_is_fresh_and_writable(postgres_url: str) -> None:
    with psycopg.connect(postgres_url) as connection:
        tables = connection.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
        connection.execute("CREATE TEMPORARY TABLE probe (x int)")
    assert tables == (0,)
