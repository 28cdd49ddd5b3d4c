"""The fault suite of issue 11: each scenario runs a whole docproc (API, two workers, DLQ
consumer, beat) on a private three-node RabbitMQ cluster and PostgreSQL, sends documents through
the API while a fault strikes, and counts from the store what became of every one of them —
0 lost, 0 duplicated, 0 stuck, 0 wrong, and every process back at work.

Reduced by default (CI); `tox -e faults` runs it at full size (see tests/faults/report.py).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import aio_pika
import pytest

from service.broker.publisher import task_message
from service.task_contract import PROCESS_DOCUMENT
from service.topology import DEAD_LETTER_EXCHANGE, DEAD_LETTER_QUEUE, DOCUMENT_QUEUE
from tests.faults import ledger
from tests.faults.deployment import Deployment, Scenario
from tests.faults.ledger import Outcome
from tests.faults.load import Load, corpus
from tests.faults.network import Namespace
from tests.faults.report import DOCUMENTS, OUTAGE, PARTITION, record

pytestmark = [
    pytest.mark.faults,
    pytest.mark.rabbitmq,
    pytest.mark.postgres,
    pytest.mark.worker,
    pytest.mark.timeout(600 + DOCUMENTS * 2 + PARTITION + OUTAGE),
]

SHORT_RETRIES = {"CELERY_RETRY_DELAY": "1", "CELERY_RETRY_BACKOFF_MAX": "5"}
"""Every scenario but the store outage, which keeps the default delay (60 s) on purpose."""
WINDOW = max(8.0, DOCUMENTS / 10)
"""Seconds over which a scenario's documents are sent: the fault strikes while they arrive."""
SETTLE = 240.0
"""Seconds after the fault's end by which every document must be final."""


async def settle(deployment: Deployment, load: Load, began: float) -> Outcome:
    """Wait for the load to be sent and for every accepted document to be final, with no
    message left in the vhost (a late duplicate delivery would still count); then count."""
    await load.done()
    deadline = time.monotonic() + SETTLE
    while True:
        found = await asyncio.to_thread(ledger.outcome, deployment.database, load.submissions)
        messages = await deployment.cluster.messages(deployment.vhost)
        left = sum(n for queue, n in messages.items() if queue != "celery")
        if (found.settled and not left) or time.monotonic() > deadline:
            found.judge(left)
            return found
        await asyncio.sleep(0.5)


def assert_clean(
    name: str,
    outcome: Outcome,
    load: Load,
    recovery: dict[str, float | None],
    began: float,
) -> None:
    record(name, outcome, recovery, began)
    never = [member for member, seconds in recovery.items() if seconds is None]
    problems = "\n".join([*load.refusals, *outcome.problems[:40]])
    assert outcome.accepted == outcome.submitted, problems
    assert (outcome.lost, outcome.duplicated, outcome.stuck, outcome.wrong) == (0, 0, 0, 0), (
        problems
    )
    assert outcome.success + outcome.dead == outcome.accepted, problems
    assert not never, f"not at work again: {never}"


async def test_worker_sigkill_loop(scenario: Scenario) -> None:
    """Workers killed with their pools, mid-task, one after the other, and started again."""
    began = time.monotonic()
    deployment = await scenario("worker-kill", **SHORT_RETRIES)
    load = Load(deployment.api_url, corpus("worker-kill", DOCUMENTS), window=WINDOW * 2).start()
    await load.reached(DOCUMENTS // 6)
    recovery: dict[str, float | None] = {}
    for round_ in range(4):  # at most 4 kills: no message can reach the delivery limit (5)
        victim = deployment.workers[round_ % 2]
        await deployment.busy(victim, timeout=10)
        victim.kill()
        victim.start()
        found = await deployment.recovery(time.monotonic(), [victim])
        seconds = found[victim.name]
        slowest = recovery.get(victim.name, 0.0)
        recovery[victim.name] = None if seconds is None else max(seconds, slowest or 0.0)
    outcome = await settle(deployment, load, began)
    assert_clean("worker SIGKILL x4", outcome, load, recovery, began)


async def node_stop(scenario: Scenario, name: str, choose: str) -> None:
    began = time.monotonic()
    deployment = await scenario(name, **SHORT_RETRIES)
    cluster = deployment.cluster
    load = Load(deployment.api_url, corpus(name, DOCUMENTS), window=WINDOW).start()
    await load.reached(DOCUMENTS // 4)
    if choose == "leader":
        node = await cluster.leader_of(deployment.vhost, DOCUMENT_QUEUE)
    else:
        connected = await cluster.connections_per_node(deployment.vhost)
        node = max(connected, key=lambda letter: connected[letter])
    await cluster.stop_node(node)
    # The fault's end is the node's stop: a cluster of three serves with two.
    recovery = await deployment.recovery(time.monotonic())
    await cluster.start_node(node)
    outcome = await settle(deployment, load, began)
    assert_clean(f"{choose} node ({node}) stopped", outcome, load, recovery, began)


async def test_leader_node_stop(scenario: Scenario) -> None:
    """The node that leads document_processing stops mid-load, and comes back later."""
    await node_stop(scenario, "leader-stop", "leader")


async def test_connected_node_stop(scenario: Scenario) -> None:
    """The node most of docproc's connections are on stops mid-load."""
    await node_stop(scenario, "connected-stop", "connected")


async def test_whole_cluster_restart(scenario: Scenario) -> None:
    """Every node stops mid-load (uploads go on: stored, queued later), then all start again."""
    began = time.monotonic()
    deployment = await scenario("cluster-restart", **SHORT_RETRIES)
    load = Load(deployment.api_url, corpus("cluster-restart", DOCUMENTS), window=WINDOW).start()
    await load.reached(DOCUMENTS // 4)
    await deployment.cluster.stop()
    await deployment.cluster.start()
    recovery = await deployment.recovery(time.monotonic())
    outcome = await settle(deployment, load, began)
    assert_clean("whole cluster restarted", outcome, load, recovery, began)


async def test_store_blocked(scenario: Scenario) -> None:
    """PostgreSQL refuses the database (every connection cut) for OUTAGE seconds mid-load, with
    the default retry delay: tasks caught in it wait in the broker, workers take no new work."""
    began = time.monotonic()
    deployment = await scenario("store-blocked")
    load = Load(deployment.api_url, corpus("store-blocked", DOCUMENTS), window=WINDOW).start()
    await load.reached(DOCUMENTS // 4)
    await asyncio.to_thread(deployment.database.block)
    await asyncio.sleep(OUTAGE)  # the fault's length, not a synchronisation
    await asyncio.to_thread(deployment.database.unblock)
    recovery = await deployment.recovery(time.monotonic())
    outcome = await settle(deployment, load, began)
    assert_clean(f"store blocked {OUTAGE:g} s", outcome, load, recovery, began)


async def publish_identical(deployment: Deployment, count: int, task_id: str) -> None:
    """`count` dead messages alike to the byte (no message_id, the same death), routed through
    docproc.dlx as RabbitMQ routes a rejected task."""
    url = deployment.cluster.broker_url(deployment.vhost).split(";")[0]
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(DEAD_LETTER_EXCHANGE, ensure=False)
        template = task_message(PROCESS_DOCUMENT, task_id, kwargs={"document_id": "not-a-document"})
        died = datetime(2026, 1, 1, tzinfo=UTC)
        death = {"count": 1, "reason": "rejected", "queue": DOCUMENT_QUEUE, "time": died}
        headers: dict[str, Any] = dict(template.headers or {}) | {"x-death": [death]}
        for _ in range(count):
            message = aio_pika.Message(
                template.body,
                headers=headers,
                content_type=template.content_type,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            )
            await exchange.publish(message, routing_key=DOCUMENT_QUEUE)


async def test_dlq_consumer_sigkill(scenario: Scenario) -> None:
    """The DLQ consumer is killed with distinct letters (bad files) and identical ones in its
    queue: once from outside, once between its commit and its ack; each letter is stored once."""
    began = time.monotonic()
    deployment = await scenario("dlq-kill", **SHORT_RETRIES)
    submissions = corpus("dlq-kill", DOCUMENTS, bad_every=4)
    dlq = deployment.dlq
    dlq.kill()
    load = Load(deployment.api_url, submissions, window=WINDOW / 2).start()
    await load.done()
    identical, task_id = max(20, DOCUMENTS), f"faults-identical-{uuid.uuid4()}"
    await publish_identical(deployment, identical, task_id)
    bad = sum(not item.good for item in submissions)

    async def queued() -> bool:
        messages = await deployment.cluster.messages(deployment.vhost)
        return messages.get(DEAD_LETTER_QUEUE, 0) >= bad + identical

    deadline = time.monotonic() + 120
    while not await queued():
        assert time.monotonic() < deadline, "the bad files' letters did not reach the queue"
        await asyncio.sleep(0.5)

    dlq.env["DOCPROC_FAULT_INJECTION"] = "after-commit"
    dlq.start()
    assert dlq.popen is not None
    status = await asyncio.to_thread(dlq.popen.wait, 120)
    assert status < 0, f"the DLQ consumer was to kill itself after its commit:\n{dlq.tail()}"
    assert ledger.letters_of(deployment.database, task_id) > 0, "killed after a commit"
    del dlq.env["DOCPROC_FAULT_INJECTION"]
    dlq.start()
    recovery = await deployment.recovery(time.monotonic(), [dlq])
    outcome = await settle(deployment, load, began)
    stored = ledger.letters_of(deployment.database, task_id)
    outcome.duplicated += max(0, stored - identical)
    outcome.not_final += max(0, identical - stored)
    if stored != identical:
        outcome.problems.append(f"{stored} records of {identical} identical letters")
    outcome.judge(0)
    assert_clean("DLQ consumer SIGKILL x2", outcome, load, recovery, began)


async def test_api_sigkill_mid_burst(scenario: Scenario) -> None:
    """The API is killed mid-burst, twice; clients send again under the same Idempotency-Key."""
    began = time.monotonic()
    deployment = await scenario("api-kill", **SHORT_RETRIES)
    load = Load(deployment.api_url, corpus("api-kill", DOCUMENTS), window=2, concurrency=16)
    load.start()
    recovery: dict[str, float | None] = {}
    for share in (3, 2):
        await load.reached(DOCUMENTS // share)
        await asyncio.to_thread(deployment.api.kill)
        deployment.api.start()
        found = await deployment.recovery(time.monotonic(), [deployment.api])
        recovery["api"] = max(found["api"] or 0.0, recovery.get("api") or 0.0)
    outcome = await settle(deployment, load, began)
    assert_clean("API SIGKILL x2 mid-burst", outcome, load, recovery, began)


async def test_network_partition(scenario: Scenario, namespace: Namespace) -> None:
    """worker-2 runs in a network namespace; its link goes down while it holds a task, for
    PARTITION seconds, then comes back."""
    began = time.monotonic()
    deployment = await scenario("partition", inside=True, **SHORT_RETRIES)
    inside = deployment.workers[1]
    submissions = corpus("partition", DOCUMENTS, heavy=4)
    load = Load(deployment.api_url, submissions, window=WINDOW).start()
    assert await deployment.busy(inside, timeout=60), "the worker in the namespace took no task"
    namespace.cut()
    try:
        await asyncio.sleep(PARTITION)  # the fault's length, not a synchronisation
    finally:
        namespace.heal()
    recovery = await deployment.recovery(time.monotonic())
    outcome = await settle(deployment, load, began)
    assert_clean(f"worker partitioned {PARTITION:g} s", outcome, load, recovery, began)
