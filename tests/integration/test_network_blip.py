"""A worker rides out a short network blip: its connection to RabbitMQ, and the tasks it runs,
go on once the network is back.

py-amqp sets TCP_USER_TIMEOUT to 1 s on every connection it makes: when what a worker sent (an
ack, an event) went unacknowledged for a second, the kernel dropped the connection. Celery then
restarted the worker's consumer and cancelled the tasks it was running, which RabbitMQ gave out
again (`worker_cancel_long_running_tasks_on_connection_loss`): a one-second blip cost every
running task its work. The worker runs in a network namespace and reaches this machine's
RabbitMQ through a relay on the namespace's veth; taking the link down drops packets silently,
as between two hosts."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
import pytest_asyncio

from service.store import task_runs
from service.store.database import Store
from service.worker import canary
from service.worker.app import BROKER_TCP_USER_TIMEOUT
from tests.faults.network import Namespace, Relay
from tests.support import (
    Process,
    Vhost,
    all_succeeded,
    eventually,
    free_port,
    missing,
    queue_tasks,
    start_worker,
)

pytestmark = [pytest.mark.rabbitmq, pytest.mark.worker]

BLIP = 4.0
"""Seconds the link is down: past py-amqp's 1 s, well within the worker's own timeout."""


@pytest_asyncio.fixture
async def namespace() -> AsyncIterator[Namespace]:
    """A namespace of its own (the fault suite's has other names), removed after the test."""
    if os.geteuid() != 0:
        missing("a network namespace needs root")
    reason = Namespace.available()
    if reason is not None:
        missing(reason)
    space = Namespace("docproc-blip", "dpblip0", "dpblip1", "10.213.78.1", "10.213.78.2")
    space.create()
    try:
        yield space
    finally:
        space.remove()


async def test_a_worker_rides_out_a_network_blip_and_its_tasks_run_once(
    vhost: Vhost, namespace: Namespace, tmp_path: Path
) -> None:
    assert BROKER_TCP_USER_TIMEOUT > 3 * BLIP
    broker = vhost.rabbitmq
    relay = Relay(broker.host, broker.port, free_port(), namespace.host_address)
    await relay.start()
    store = Store(vhost.settings().resolved_database_url)
    worker: Process | None = None
    try:
        through_relay = replace(broker, host=namespace.host_address, port=relay.port)
        url = through_relay.url(vhost.name)
        worker = await start_worker(
            vhost,
            tmp_path / "worker.log",
            prefix=namespace.command([]),
            DOCPROC_BROKER_URL=url,
        )
        [long] = await queue_tasks(vhost, canary.SLEEP, 1, seconds=8)
        [short] = await queue_tasks(vhost, canary.SLEEP, 1, seconds=2.5)

        async def both_running() -> bool | None:
            runs = [await asyncio.to_thread(store.run, task_runs.get, t) for t in (long, short)]
            running = [r for r in runs if r is not None and r.started_at and not r.finished_at]
            return True if len(running) == 2 else None

        await eventually(both_running, 30, "both tasks to start")
        # The short task ends, and its ack is sent, while the link is down.
        namespace.cut()
        try:
            await asyncio.sleep(BLIP)  # the fault's length, not a synchronisation
        finally:
            namespace.heal()
        await eventually(all_succeeded(store, [long, short]), 60, "both tasks to succeed")

        output = worker.output()
        assert "Connection to broker lost" not in output, worker.tail()
        # Each delivery is logged as received: a task given out again after a cancel is twice.
        assert output.count(f"[{long}] received") == 1, worker.tail()
        assert output.count(f"[{short}] received") == 1, worker.tail()
    finally:
        if worker is not None:
            worker.stop()
        store.close()
        await relay.stop()
