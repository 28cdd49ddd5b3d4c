"""A retry the broker will not take for a moment is not a dead task.

A pool process publishes a task's retry on a connection of its own. When RabbitMQ refuses it (here:
the vhost's connection limit, reached on purpose), Celery rejected the task's message without
requeue: RabbitMQ dead-lettered a transient failure as `rejected`, and its run was recorded
FAILURE. Now the message goes back to its queue after the retry's pause, and runs again.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from service.broker.publisher import task_message
from service.store.database import Store
from service.topology import DOCUMENT_QUEUE, EXCHANGE
from service.worker import canary
from tests.support import (
    DeadLetterQueue,
    Process,
    RabbitMQ,
    Vhost,
    all_succeeded,
    eventually,
    rabbitmqctl_on,
    start_worker,
)

pytestmark = [pytest.mark.rabbitmq, pytest.mark.worker]


async def test_a_retry_the_broker_refuses_for_a_moment_runs_again_and_succeeds(
    vhost: Vhost, rabbitmq: RabbitMQ, tmp_path: Path
) -> None:
    rabbitmqctl = rabbitmqctl_on(rabbitmq)
    store = Store(vhost.settings().resolved_database_url)
    connection = await vhost.connect()
    worker: Process | None = None
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(EXCHANGE, ensure=False)
        worker = await start_worker(vhost, tmp_path / "worker.log")
        # No new connection on this vhost from now on: the pool process's first publish, the
        # retry, needs one (the worker's main process and this test have theirs).
        open_now = rabbitmqctl("list_connections", "vhost").splitlines().count(vhost.name)
        rabbitmqctl("set_vhost_limits", "-p", vhost.name, f'{{"max-connections": {open_now}}}')
        try:
            task_id = str(uuid.uuid4())
            message = task_message(canary.FLAKY, task_id, kwargs={"failures": 1})
            await exchange.publish(message, routing_key=DOCUMENT_QUEUE)
            await worker.said(
                "cannot publish the task's retry",
                30,
                "the worker to meet a retry it cannot publish",
                interval=0.05,
            )
        finally:
            rabbitmqctl("clear_vhost_limits", "-p", vhost.name)

        await eventually(all_succeeded(store, [task_id]), 60, "the task to run again and succeed")
        assert await DeadLetterQueue(channel).drained() == [], "nothing dead-lettered"
        warned = [line for line in worker.output().splitlines() if "cannot publish" in line]
        assert "connection limit" in warned[0], warned  # the refusal meant, of the retry
    finally:
        if worker is not None:
            worker.stop()
        await connection.close()
        store.close()
