"""The harness itself: each session gets a vhost and a database of its own.

Other tests of the session may have used them before these run (the order of the tiers is
tests/lanes.py's), so "fresh" is read as: nothing in them that this session's code did not put
there — docproc's own queues and tables at most."""

from __future__ import annotations

import psycopg
import pytest

from service.settings import Settings
from service.store.schema import metadata
from service.topology import build_topology
from tests.support import Vhost


@pytest.mark.rabbitmq
async def test_the_session_vhost_is_fresh_and_ours(broker: Vhost) -> None:
    async with broker.management() as management:
        queues = {queue.name for queue in await management.queues()}
        whoami = await management.overview()
    ours = {queue.name for queue in build_topology(Settings.from_env(broker.env())).queues}
    assert queues <= ours, queues - ours
    assert broker.name.startswith("docproc-session")
    assert whoami["rabbitmq_version"]


@pytest.mark.postgres
def test_the_session_database_is_fresh_and_writable(postgres_url: str) -> None:
    with psycopg.connect(postgres_url) as connection:
        found = connection.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchall()
        connection.execute("CREATE TEMPORARY TABLE probe (x int)")
    tables = {name for (name,) in found}
    assert tables <= set(metadata.tables) | {"alembic_version"}, tables
    assert postgres_url.rsplit("/", 1)[1].startswith("docproc_test_")
