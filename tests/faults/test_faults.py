"""The fault suite of issue 11: each scenario runs a whole docproc (API, two workers, DLQ
consumer, beat) on a private three-node RabbitMQ cluster and PostgreSQL, sends documents through
the API while a fault strikes, and counts from the store what became of every one of them —
0 lost, 0 duplicated, 0 stuck, 0 wrong, and every process back at work.

Reduced by default (CI); `tox -e faults` runs it at full size (see tests/faults/report.py).
"""

from __future__ import annotations

import asyncio
import signal
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
from tests.faults.deployment import Deployment
from tests.faults.ledger import Outcome
from tests.faults.load import Load, corpus
from tests.faults.network import Namespace
from tests.faults.report import DOCUMENTS, KILLS, OUTAGE, PARTITION, record
from tests.support import eventually

pytestmark = [
    pytest.mark.faults,
    pytest.mark.rabbitmq,
    pytest.mark.postgres,
    pytest.mark.worker,
    pytest.mark.timeout(900 + DOCUMENTS * 2 + PARTITION + OUTAGE),
]

WINDOW = max(8.0, DOCUMENTS / 10)
"""Seconds over which a scenario's documents are sent: the fault strikes while they arrive."""
SETTLE = 600.0
"""Seconds after the fault's end by which every document must be final."""


async def settle(deployment: Deployment, scenario: str, load: Load) -> Outcome:
    """Wait for the load to be sent and for every accepted document to be final, with no
    message left in the vhost (a late duplicate delivery would still count); then count."""
    await load.done()
    deadline = time.monotonic() + SETTLE
    while True:
        found = await asyncio.to_thread(
            ledger.outcome, deployment.database, scenario, load.submissions
        )
        messages = await deployment.cluster.messages(deployment.vhost)
        left = sum(n for queue, n in messages.items() if queue != "celery")
        if (found.settled and not left) or time.monotonic() > deadline:
            found.judge(left)
            return found
        await asyncio.sleep(0.5)


def assert_clean(
    title: str, outcome: Outcome, load: Load, recovery: dict[str, float | None], began: float
) -> None:
    record(title, outcome, recovery, began)
    never = [member for member, seconds in recovery.items() if seconds is None]
    problems = "\n".join([*load.refusals, *outcome.problems[:40]])
    assert outcome.accepted == outcome.submitted, problems
    zeros = (outcome.lost, outcome.duplicated, outcome.stuck, outcome.wrong)
    assert zeros == (0, 0, 0, 0), problems
    assert outcome.success + outcome.dead == outcome.accepted, problems
    assert not never, f"not at work again: {never}"


def slowest(recovery: dict[str, float | None], found: dict[str, float | None]) -> None:
    """Keep each process's slowest recovery (None: one that never came back)."""
    for name, seconds in found.items():
        worst = recovery.get(name, 0.0)
        recovery[name] = None if seconds is None or worst is None else max(seconds, worst)


def start_load(deployment: Deployment, name: str, **options: Any) -> Load:
    shape = {key: options.pop(key) for key in ("heavy", "bad_every") if key in options}
    submissions = corpus(name, DOCUMENTS, **shape)
    return Load(deployment.api_url, submissions, **({"window": WINDOW} | options)).start()


async def test_worker_sigkill_loop(deployment: Deployment) -> None:
    """Workers killed with their pools, each while it holds a task, in turn, and started again
    at once (as `docproc up` or systemd would); KILLS kills, at most four, so that no message
    can reach the delivery limit (5) however the kills fall."""
    assert 1 <= KILLS <= 4, f"DOCPROC_FAULTS_KILLS={KILLS}: 1 to 4"
    began = time.monotonic()
    load = start_load(deployment, "worker-kill", window=WINDOW * (1 + KILLS), heavy=3 * KILLS)
    await load.reached(DOCUMENTS // 8)
    restarts: list[asyncio.Task[dict[str, float | None]]] = []
    for round_ in range(KILLS):
        victim = deployment.workers[round_ % 2]
        if round_ >= 2:
            await restarts[round_ - 2]  # the victim works again before it is killed again
        assert await deployment.busy(victim, timeout=60), f"{victim.name} took no task"
        await asyncio.to_thread(victim.kill)
        victim.start()
        restarts.append(asyncio.create_task(deployment.recovery(time.monotonic(), [victim])))
    recovery: dict[str, float | None] = {}
    for found in await asyncio.gather(*restarts):
        slowest(recovery, found)
    outcome = await settle(deployment, "worker-kill", load)
    assert_clean(f"worker SIGKILL x{KILLS} (mid-task)", outcome, load, recovery, began)


async def node_stop(deployment: Deployment, name: str, choose: str) -> None:
    began = time.monotonic()
    cluster = deployment.cluster
    load = start_load(deployment, name)
    await load.reached(DOCUMENTS // 4)
    if choose == "leader":
        node = await cluster.leader_of(deployment.vhost, DOCUMENT_QUEUE)
    else:
        connected = await cluster.connections_per_node(deployment.vhost)
        node = max(connected, key=lambda letter: connected[letter])
    await cluster.stop_node(node)
    try:
        # The fault's end is the node's stop: a cluster of three serves with two.
        recovery = await deployment.recovery(time.monotonic())
    finally:
        await cluster.start_node(node)
    outcome = await settle(deployment, name, load)
    assert_clean(f"{choose} node ({node}) stopped", outcome, load, recovery, began)


async def test_leader_node_stop(deployment: Deployment) -> None:
    """The node that leads document_processing stops mid-load, and comes back later."""
    await node_stop(deployment, "leader-stop", "leader")


async def test_connected_node_stop(deployment: Deployment) -> None:
    """The node most of docproc's connections are on stops mid-load."""
    await node_stop(deployment, "connected-stop", "connected")


@pytest.mark.full_faults  # ~3.5 min even reduced (stopping and starting three nodes in turn)
async def test_whole_cluster_restart(deployment: Deployment) -> None:
    """Every node stops mid-load (uploads go on: stored, queued later), then all start again."""
    began = time.monotonic()
    load = start_load(deployment, "cluster-restart")
    await load.reached(DOCUMENTS // 4)
    try:
        await deployment.cluster.stop()
    finally:
        await deployment.cluster.start()
    recovery = await deployment.recovery(time.monotonic())
    outcome = await settle(deployment, "cluster-restart", load)
    assert_clean("whole cluster restarted", outcome, load, recovery, began)


async def test_store_blocked(deployment: Deployment) -> None:
    """PostgreSQL refuses the database (every connection cut) for OUTAGE seconds mid-load, with
    the default retry delay: tasks caught in it wait in the broker, workers take no new work."""
    began = time.monotonic()
    load = start_load(deployment, "store-blocked")
    await load.reached(DOCUMENTS // 4)
    await asyncio.to_thread(deployment.database.block)
    try:
        await asyncio.sleep(OUTAGE)  # the fault's length, not a synchronisation
    finally:
        await asyncio.to_thread(deployment.database.unblock)
    recovery = await deployment.recovery(time.monotonic())
    outcome = await settle(deployment, "store-blocked", load)
    assert_clean(f"store blocked {OUTAGE:g} s", outcome, load, recovery, began)


async def publish_identical(deployment: Deployment, count: int, task_id: str) -> None:
    """`count` dead messages alike to the byte (no message_id, the same death), routed through
    docproc.dlx as RabbitMQ routes a rejected task."""
    url = deployment.cluster.broker_url(deployment.vhost).split(";")[0]
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(DEAD_LETTER_EXCHANGE, ensure=False)
        template = task_message(PROCESS_DOCUMENT, task_id, kwargs={"document_id": "none"})
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


async def test_dlq_consumer_sigkill(deployment: Deployment) -> None:
    """The DLQ consumer is killed with distinct letters (bad files, one in four) and identical
    ones in its queue — from outside, then by itself between its commit and its ack; each
    letter is stored once."""
    began = time.monotonic()
    dlq = deployment.dlq
    await asyncio.to_thread(dlq.kill)
    load = start_load(deployment, "dlq-kill", bad_every=4, window=WINDOW / 2)
    await load.done()
    identical, task_id = max(20, DOCUMENTS), f"faults-identical-{uuid.uuid4()}"
    await publish_identical(deployment, identical, task_id)
    bad = sum(not item.good for item in load.submissions)

    async def queued() -> bool | None:
        messages = await deployment.cluster.messages(deployment.vhost)
        return True if messages.get(DEAD_LETTER_QUEUE, 0) >= bad + identical else None

    await eventually(queued, 120, "the letters to wait in docproc.dead_letter", interval=0.5)
    dlq.env["DOCPROC_FAULT_INJECTION"] = "after-commit"
    try:
        dlq.start()
        assert dlq.popen is not None
        status = await asyncio.to_thread(dlq.popen.wait, 120)
    finally:
        del dlq.env["DOCPROC_FAULT_INJECTION"]
    assert status == -signal.SIGKILL, f"not killed after its commit:\n{dlq.tail()}"
    assert ledger.letters_of(deployment.database, task_id) > 0, "killed after a commit"
    dlq.start()
    recovery = await deployment.recovery(time.monotonic(), [dlq])
    outcome = await settle(deployment, "dlq-kill", load)
    stored = ledger.letters_of(deployment.database, task_id)
    if stored != identical:
        outcome.problems.append(f"{stored} records of {identical} identical letters")
    outcome.duplicated += max(0, stored - identical)
    outcome.lost += max(0, identical - stored)
    assert_clean("DLQ consumer SIGKILL x2", outcome, load, recovery, began)


async def test_api_sigkill_mid_burst(deployment: Deployment) -> None:
    """The API is killed mid-burst, twice, and started again; clients send again under the same
    Idempotency-Key whatever they did not get a 202 for."""
    began = time.monotonic()
    load = start_load(deployment, "api-kill", window=2, concurrency=16)
    recovery: dict[str, float | None] = {}
    for share in (3, 2):
        await load.reached(DOCUMENTS // share)
        await asyncio.to_thread(deployment.api.kill)
        deployment.api.start()
        found = await deployment.recovery(time.monotonic(), [deployment.api])
        worst = recovery.get("api", 0.0)
        recovery["api"] = (
            None if found["api"] is None or worst is None else max(found["api"], worst)
        )
    outcome = await settle(deployment, "api-kill", load)
    assert_clean("API SIGKILL x2 mid-burst", outcome, load, recovery, began)


async def test_network_partition(deployment: Deployment, namespace: Namespace) -> None:
    """worker-2 runs in a network namespace; its link goes down while it holds a task, for
    PARTITION seconds, then comes back."""
    began = time.monotonic()
    inside = deployment.inside
    load = start_load(deployment, "partition", heavy=4)
    assert await deployment.busy(inside, timeout=60), "the worker in the namespace took no task"
    namespace.cut()
    try:
        await asyncio.sleep(PARTITION)  # the fault's length, not a synchronisation
    finally:
        namespace.heal()
    recovery = await deployment.recovery(time.monotonic())
    outcome = await settle(deployment, "partition", load)
    assert_clean(f"worker-2 partitioned {PARTITION:g} s", outcome, load, recovery, began)
