"""The fault suite's fixtures: one private RabbitMQ cluster and one network namespace for the
session, and per scenario a vhost, a database and a whole docproc deployment of its own."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import pytest_asyncio

from tests.faults.cluster import Cluster
from tests.faults.deployment import Deployment
from tests.faults.ledger import Database
from tests.faults.network import HOST_ADDRESS, Namespace, Relay
from tests.faults.report import DOCUMENTS, OUTAGE, PARTITION, REPORT, TABLE
from tests.support import free_port, missing, run_docproc


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not TABLE.rows:
        return
    terminalreporter.section("faults: counted from the store; recovery in seconds")
    terminalreporter.write_line(
        f"{DOCUMENTS} documents per scenario, partition {PARTITION:g} s, store blocked {OUTAGE:g} s"
    )
    terminalreporter.write_line(TABLE.markdown())
    if REPORT:
        Path(REPORT).write_text(TABLE.markdown() + "\n")


@pytest.fixture(scope="session")
def faults_machine() -> None:
    """Root, rabbitmq-server and `ip netns`, or the suite cannot run (fail under CI=true)."""
    if os.geteuid() != 0:
        missing("the fault suite runs as root (network namespaces; RabbitMQ nodes)")
    if shutil.which("rabbitmq-server") is None:
        missing("the fault suite needs rabbitmq-server (apt-get install rabbitmq-server)")
    reason = Namespace.available()
    if reason is not None:
        missing(f"the fault suite needs network namespaces: {reason}")


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def namespace(faults_machine: None) -> AsyncIterator[Namespace]:
    space = Namespace()
    space.create()
    try:
        yield space
    finally:
        space.remove()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def cluster(namespace: Namespace) -> AsyncIterator[Cluster]:
    """infra/rabbitmq/cluster.sh's three nodes, listening on the veth too; reset at the end.
    Their directory is one the rabbitmq user can reach (pytest's are the runner's alone)."""
    parent = Path(tempfile.mkdtemp(prefix="docproc-faults-"))
    os.chmod(parent, 0o755)
    cluster = Cluster(parent / "nodes", listen=(HOST_ADDRESS,))
    try:
        await cluster.stop()  # nodes an earlier run cut short left behind
        await cluster.start()
        await cluster.create_client_user()
        yield cluster
    finally:
        await cluster.reset()
        shutil.rmtree(parent, ignore_errors=True)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def relay(namespace: Namespace, postgres_url: str) -> AsyncIterator[Relay]:
    """PostgreSQL for the namespace, on the host's end of the veth."""
    parts = urlsplit(postgres_url)
    link = Relay(parts.hostname or "127.0.0.1", parts.port or 5432, free_port())
    await link.start()
    try:
        yield link
    finally:
        await link.stop()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def running(
    cluster: Cluster,
    relay: Relay,
    postgres_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Deployment]:
    """The run's docproc — worker-2 in the namespace — on a vhost and a database of its own
    (made for the run, removed after it); the scenarios take turns on it."""
    admin = urlsplit(postgres_url)._replace(path="/postgres").geturl()
    async with AsyncExitStack() as stack:
        vhost = f"faults-{uuid.uuid4().hex[:10]}"
        await cluster.create_vhost(vhost)
        stack.push_async_callback(cluster.delete_vhost, vhost)
        database = Database(admin)
        await asyncio.to_thread(database.create)
        stack.push_async_callback(asyncio.to_thread, database.drop)
        logs = tmp_path_factory.mktemp("deployment")
        deployment = Deployment(cluster, database, vhost, logs, relay_port=relay.port)
        declared = await asyncio.to_thread(
            run_docproc, "topology", "declare", env=deployment.api.env
        )
        assert declared.returncode == 0, declared.stderr
        stack.push_async_callback(deployment.stop)
        await deployment.revive()
        yield deployment


@pytest_asyncio.fixture(loop_scope="session")
async def deployment(running: Deployment) -> Deployment:
    """The run's docproc, whole again before a scenario: every node up, every process at work
    (whatever an earlier scenario left behind)."""
    if not await running.cluster.whole():
        await running.cluster.start()
    await running.revive()
    return running
