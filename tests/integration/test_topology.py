"""The topology on a real broker: declared, checked, equal to what Celery itself declares."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import aio_pika
import httpx
import kombu
import pytest
from kombu.transport.native_delayed_delivery import (
    bind_queue_to_native_delayed_delivery_exchange,
    declare_native_delayed_delivery_exchanges_and_queues,
)

from service.broker.drift import compare
from service.topology import (
    DEAD_LETTER_EXCHANGE,
    DEAD_LETTER_QUEUE,
    EXCHANGE,
    WORK_QUEUES,
    Topology,
    build_topology,
)
from service.worker import canary
from service.worker.app import celery_queues, create_celery
from tests.support import (
    ROOT,
    DeadLetterQueue,
    Process,
    Reports,
    Vhost,
    docproc_command,
    first_death,
    run_docproc,
    start_worker,
)

pytestmark = pytest.mark.rabbitmq


async def test_declare_creates_the_work_queues_with_broker_level_dead_lettering(
    fresh_vhost: Vhost,
) -> None:
    declared = await asyncio.to_thread(run_docproc, "topology", "declare", env=fresh_vhost.env())
    assert declared.returncode == 0, declared.stderr

    async with fresh_vhost.management() as management:
        queues = {queue.name: queue for queue in await management.queues()}
        exchanges = {exchange.name: exchange for exchange in await management.exchanges()}
        bindings = await management.bindings()
    for name in WORK_QUEUES:
        queue = queues[name]
        assert queue.type == "quorum"
        assert queue.durable
        assert queue.arguments["x-dead-letter-exchange"] == DEAD_LETTER_EXCHANGE
        assert queue.arguments["x-dead-letter-routing-key"] == name
        assert queue.arguments["x-delivery-limit"] == 5
        assert queue.arguments["x-dead-letter-strategy"] == "at-least-once"
        assert queue.arguments["x-overflow"] == "reject-publish"
    assert exchanges[EXCHANGE].type == "topic"
    assert exchanges[DEAD_LETTER_EXCHANGE].type == "topic"
    assert queues[DEAD_LETTER_QUEUE].type == "quorum"
    assert any(
        b.source == DEAD_LETTER_EXCHANGE
        and b.destination == DEAD_LETTER_QUEUE
        and b.routing_key == "#"
        for b in bindings
    )

    again = await asyncio.to_thread(run_docproc, "topology", "declare", env=fresh_vhost.env())
    checked = await asyncio.to_thread(run_docproc, "topology", "check", env=fresh_vhost.env())
    assert again.returncode == 0, again.stderr
    assert checked.returncode == 0, checked.stdout + checked.stderr


async def test_classic_queues_dead_letter_a_failing_task_too(
    fresh_vhost: Vhost, tmp_path: Path
) -> None:
    env = {"DOCPROC_QUEUE_TYPE": "classic"}
    declared = await asyncio.to_thread(
        run_docproc, "topology", "declare", env=fresh_vhost.env(**env)
    )
    assert declared.returncode == 0, declared.stderr
    async with fresh_vhost.management() as management:
        queue = await management.queue(WORK_QUEUES[0])
    assert queue is not None
    assert queue.type == "classic"
    assert queue.arguments["x-dead-letter-exchange"] == DEAD_LETTER_EXCHANGE
    assert "x-delivery-limit" not in queue.arguments

    worker = await start_worker(fresh_vhost, tmp_path / "worker.log", **env)
    client = create_celery(fresh_vhost.settings(**env))
    connection = await fresh_vhost.connect()
    try:
        reports = await Reports.open(connection)
        result = client.send_task(canary.FAIL, kwargs={"report_to": reports.name})
        dead = await DeadLetterQueue(await connection.channel()).for_task(result.id)
        assert first_death(dead)["reason"] == "rejected"
    finally:
        await connection.close()
        client.close()
        worker.stop()


async def test_drift_is_reported_by_check_and_stops_a_worker_with_the_fix(
    fresh_vhost: Vhost, tmp_path: Path
) -> None:
    connection = await fresh_vhost.connect()
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(WORK_QUEUES[0], durable=True)  # classic, no dead-lettering

    checked = await asyncio.to_thread(run_docproc, "topology", "check", env=fresh_vhost.env())

    assert checked.returncode == 1
    assert (
        f"queue {WORK_QUEUES[0]}: x-queue-type is 'classic', docproc expects 'quorum'"
        in checked.stdout
    )
    assert f"queue {WORK_QUEUES[0]}: x-dead-letter-exchange is not set" in checked.stdout
    assert f"queue {WORK_QUEUES[1]}: missing" in checked.stdout
    async with fresh_vhost.management() as management:
        queues = {queue.name for queue in await management.queues()}
    assert queues == {WORK_QUEUES[0]}, "check changed the broker"

    for command in (
        docproc_command("serve", "worker"),
        [sys.executable, "-m", "celery", "-A", "service.worker.celery", "worker"],
    ):
        started = time.monotonic()
        worker = Process(command, fresh_vhost.env(), tmp_path / f"{command[-1]}.log")
        code = await asyncio.to_thread(worker.popen.wait, 30)
        output = worker.output()
        worker.stop()
        assert code == 78, output
        assert time.monotonic() - started < 30
        assert "Traceback" not in output
        line = next(line for line in output.splitlines() if line.startswith("docproc: "))
        assert f"queue {WORK_QUEUES[0]}" in line
        assert "x-queue-type is 'classic', docproc expects 'quorum'" in line
        assert "Fix:" in line
        assert "rabbitmqctl delete_queue" in line


def _declare_as_celery_does(vhost: Vhost, topology: Topology) -> None:
    with kombu.Connection(vhost.url) as connection:
        channel = connection.channel()
        for queue in celery_queues(topology):
            queue(channel).declare()
        declare_native_delayed_delivery_exchanges_and_queues(connection, "quorum")
        for queue in celery_queues(topology):
            bind_queue_to_native_delayed_delivery_exchange(connection, queue)


async def test_what_celery_and_kombu_declare_is_exactly_our_topology(fresh_vhost: Vhost) -> None:
    topology = build_topology(fresh_vhost.settings())
    await asyncio.to_thread(_declare_as_celery_does, fresh_vhost, topology)
    ours_only = {DEAD_LETTER_EXCHANGE, DEAD_LETTER_QUEUE}  # Celery never declares these
    celery_part = Topology(
        exchanges=tuple(e for e in topology.exchanges if e.name not in ours_only),
        queues=tuple(q for q in topology.queues if q.name not in ours_only),
        bindings=tuple(b for b in topology.bindings if b.destination not in ours_only),
    )

    async with fresh_vhost.management() as management:
        exchanges = await management.exchanges()
        queues = await management.queues()
        bindings = await management.bindings()

    assert compare(celery_part, exchanges, queues, bindings) == []
    extra_exchanges = {e.name for e in exchanges if e.name and not e.name.startswith("amq.")}
    assert extra_exchanges == {e.name for e in celery_part.exchanges}
    assert {q.name for q in queues} == {q.name for q in celery_part.queues}
    found = {(b.source, b.destination, b.routing_key) for b in bindings if b.source}
    assert found == {(b.source, b.destination, b.routing_key) for b in celery_part.bindings}


async def test_the_definitions_file_loads_into_the_management_plugin_as_our_topology(
    fresh_vhost: Vhost,
) -> None:
    definitions = (ROOT / "infra" / "rabbitmq" / "definitions.json").read_bytes()
    rabbitmq = fresh_vhost.rabbitmq
    async with httpx.AsyncClient(auth=(rabbitmq.user, rabbitmq.password)) as http:
        loaded = await http.post(
            f"{rabbitmq.management_url}/api/definitions/{fresh_vhost.name}",
            content=definitions,
            headers={"content-type": "application/json"},
        )
    assert loaded.status_code in (200, 201, 204), loaded.text

    checked = await asyncio.to_thread(run_docproc, "topology", "check", env=fresh_vhost.env())

    assert checked.returncode == 0, checked.stdout + checked.stderr


async def test_aio_pika_and_py_amqp_declarations_are_equivalent(fresh_vhost: Vhost) -> None:
    """RabbitMQ compares argument types by class; pamqp and py-amqp encode integers differently."""
    topology = build_topology(fresh_vhost.settings())
    declared = await asyncio.to_thread(run_docproc, "topology", "declare", env=fresh_vhost.env())
    assert declared.returncode == 0, declared.stderr

    await asyncio.to_thread(_declare_as_celery_does, fresh_vhost, topology)

    connection = await aio_pika.connect(fresh_vhost.url)
    async with connection:
        channel = await connection.channel()
        queue = topology.queue(WORK_QUEUES[0])
        await channel.declare_queue(queue.name, durable=True, arguments=dict(queue.arguments))
