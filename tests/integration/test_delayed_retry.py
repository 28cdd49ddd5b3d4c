"""Retries wait in the broker (Celery's native delayed delivery), not in worker memory."""

from __future__ import annotations

import itertools
import json
import uuid
import zlib
from datetime import UTC, datetime, timedelta

import aio_pika
import pytest

from service.broker.publisher import task_message
from service.logs import CORRELATION_HEADER
from service.task_contract import DEATH_HEADERS
from service.topology import DOCUMENT_QUEUE, EXCHANGE, RETRY_QUEUE, delay_level_name
from service.worker import canary
from service.worker.app import DocprocCelery
from tests.support import DeadLetterQueue, Process, Reports, Vhost, eventually, first_death

pytestmark = [pytest.mark.rabbitmq, pytest.mark.worker]


def delay_in_routing_key(routing_key: str) -> int:
    """Native delayed delivery writes the delay as 28 binary digits before the real routing key."""
    bits = routing_key.split(".")[:28]
    assert all(bit in "01" for bit in bits), routing_key
    return int("".join(bits), 2)


async def test_five_successive_delayed_retries_each_travel_through_the_broker_and_succeed(
    worker: Process, client: DocprocCelery, reports: Reports
) -> None:
    result = client.send_task(canary.FLAKY, kwargs={"failures": 5, "report_to": reports.name})

    await reports.wait_for(
        lambda r: r["task_id"] == result.id and r["event"] == "succeeded",
        timeout=60,
        what="the flaky canary to succeed after five retries",
    )

    runs = [r for r in reports.seen if r["task_id"] == result.id]
    assert [r["event"] for r in runs] == ["retrying"] * 5 + ["succeeded"]
    assert [r["retries"] for r in runs] == [0, 1, 2, 3, 4, 5]
    for before, after in itertools.pairwise(runs):
        # Each retry came back from retry_queue through the delay cascade ...
        assert after["routing_key"].endswith(f".{RETRY_QUEUE}")
        assert any(q.startswith("celery_delayed_") for q in after["delayed_through"]), after
        # ... no earlier than the delay it asked for (whole seconds, never zero).
        delay = delay_in_routing_key(after["routing_key"])
        assert 1 <= delay <= 2  # CELERY_RETRY_DELAY=1, CELERY_RETRY_BACKOFF_MAX=2 in tests
        assert after["time"] - before["time"] >= delay - 0.05


async def test_retries_are_spent_then_the_task_is_dead_lettered(
    worker: Process, client: DocprocCelery, reports: Reports, dead_letters: DeadLetterQueue
) -> None:
    result = client.send_task(canary.FLAKY, kwargs={"failures": 10, "report_to": reports.name})

    dead = await dead_letters.for_task(result.id, timeout=60)

    assert first_death(dead)["reason"] == "rejected"
    assert first_death(dead)["queue"] == RETRY_QUEUE
    # CELERY_MAX_RETRIES=5 in tests: the first run and exactly five retries.
    assert await reports.events(result.id) == ["retrying"] * 6
    assert (dead.headers or {})["retries"] == 5


async def test_the_correlation_id_header_is_bound_to_the_task_log_lines_across_retries(
    worker: Process, client: DocprocCelery, reports: Reports
) -> None:
    correlation_id = f"corr-{uuid.uuid4()}"
    result = client.send_task(
        canary.FLAKY,
        kwargs={"failures": 1, "report_to": reports.name},
        headers={CORRELATION_HEADER: correlation_id},
    )
    await reports.wait_for(lambda r: r["task_id"] == result.id and r["event"] == "succeeded")

    lines = [json.loads(line) for line in worker.output().splitlines() if line.startswith("{")]
    canary_lines = [
        line
        for line in lines
        if line.get("correlation_id") == correlation_id and line["message"].startswith("canary ")
    ]
    assert [line["message"] for line in canary_lines] == [
        f"canary {canary.FLAKY}: retrying",
        f"canary {canary.FLAKY}: succeeded",
    ]


async def test_a_correlation_header_json_cannot_encode_gives_way_to_the_task_id(
    worker: Process, client: DocprocCelery, reports: Reports
) -> None:
    """py-amqp decodes a header's bytes ED B3 BF to a lone surrogate: the worker's log wrote
    loguru's error dumps instead of the task's JSON lines (and the store refused its run)."""
    result = client.send_task(
        canary.SUCCEED,
        kwargs={"report_to": reports.name},
        headers={CORRELATION_HEADER: "cid-\udcff-evil"},
    )
    await reports.wait_for(lambda r: r["task_id"] == result.id and r["event"] == "succeeded")

    output = worker.output()
    assert "Logging error" not in output, worker.tail()
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    said = [line["message"] for line in lines if line.get("correlation_id") == result.id]
    assert f"canary {canary.SUCCEED}: succeeded" in said


async def test_tasks_due_later_wait_in_the_broker_not_in_the_worker(
    worker: Process,
    reports: Reports,
    dead_letters: DeadLetterQueue,
    connection: aio_pika.abc.AbstractConnection,
    work_vhost: Vhost,
) -> None:
    """A message with an eta, sent as a stock client or anyone else writes it, was held by the
    worker until then: it took one of the two deliveries a quorum queue lets the worker have
    unacked, and three a day ahead stopped all processing for a day. They go back to the delay
    queues now, and what comes behind them runs at once; an eta past what those queues can hold
    is dead-lettered."""
    channel = await connection.channel(publisher_confirms=True)
    exchange = await channel.get_exchange(EXCHANGE, ensure=False)

    async def send(eta: datetime | None) -> str:
        task_id = str(uuid.uuid4())
        message = task_message(canary.SUCCEED, task_id, kwargs={"report_to": reports.name})
        message.headers["eta"] = eta.isoformat() if eta else None
        await exchange.publish(message, routing_key=DOCUMENT_QUEUE)
        return task_id

    tomorrow = datetime.now(UTC) + timedelta(days=1)
    later = [await send(tomorrow) for _ in range(3)]
    never = await send(datetime(2099, 1, 1, tzinfo=UTC))
    now = await send(None)

    await reports.wait_for(
        lambda r: r["task_id"] == now and r["event"] == "succeeded",
        timeout=30,
        what="the task behind them to run",
    )
    dead = await dead_letters.for_task(never)
    assert first_death(dead)["reason"] == "rejected"
    for task_id in later:
        assert await reports.events(task_id) == [], "not run before its eta"

    async def in_the_broker() -> bool | None:
        # The management API's counts lag by its statistics interval (5 s).
        async with work_vhost.management() as management:
            queue = await management.queue(DOCUMENT_QUEUE)
            waiting = [await management.queue(delay_level_name(level)) for level in range(28)]
        held = queue.messages_unacknowledged if queue is not None else -1
        delayed = sum(q.messages for q in waiting if q is not None)
        return True if (held, delayed) == (0, 3) else None

    await eventually(in_the_broker, 30, "the three to wait in the delay queues, none held")


async def handed_back(
    channel: aio_pika.abc.AbstractChannel, task_id: str
) -> aio_pika.abc.AbstractIncomingMessage:
    """The copy of task `task_id`, handed back an hour ahead, in the level of 2**11 s (which no
    other test here uses), taken off it: it would run long after this vhost is gone."""
    waiting = await channel.get_queue(delay_level_name(11), ensure=False)

    async def taken() -> aio_pika.abc.AbstractIncomingMessage | None:
        got = await waiting.get(no_ack=False, fail=False)
        if got is None:
            return None
        if got.headers.get("id") != task_id:
            await got.reject(requeue=True)
            return None
        await got.ack()
        return got

    return await eventually(taken, 30, f"task {task_id} in the delay queues")


async def test_a_task_handed_back_goes_without_the_deaths_of_its_way_here(
    worker: Process, connection: aio_pika.abc.AbstractConnection
) -> None:
    """A message that came through the delay queues carries their deaths (`x-death`). Handed
    back to them with those, RabbitMQ < 4 may take its next pass for a dead-letter loop with no
    rejection in it, and drop it: the worker sends it on without them, the rest as it came."""
    channel = await connection.channel(publisher_confirms=True)
    exchange = await channel.get_exchange(EXCHANGE, ensure=False)
    task_id = str(uuid.uuid4())
    message = task_message(canary.SUCCEED, task_id, kwargs={})
    died = datetime.now(UTC)
    # An hour ahead: it waits first in the level of 2**11 s, which no other test here uses.
    message.headers |= {
        "eta": (died + timedelta(hours=1)).isoformat(),
        "x-death": [
            {
                "count": 1,
                "reason": "expired",
                "queue": delay_level_name(0),
                "time": died,
                "exchange": delay_level_name(0),
                "routing-keys": [f"1.{DOCUMENT_QUEUE}"],
            }
        ],
        "x-first-death-queue": delay_level_name(0),
        "x-first-death-reason": "expired",
        "x-first-death-exchange": delay_level_name(0),
    }
    await exchange.publish(message, routing_key=DOCUMENT_QUEUE)

    copy = await handed_back(channel, task_id)
    # The quorum queue it is read from counts its own deliveries (x-delivery-count, 0 here).
    assert not (DEATH_HEADERS - {"x-delivery-count"}) & set(copy.headers), copy.headers
    assert copy.headers["eta"] == message.headers["eta"]
    assert copy.headers["task"] == canary.SUCCEED
    assert copy.correlation_id == message.correlation_id


AS_IT_CAME = {
    "compressed": (
        zlib.compress(b'[[], {}, {"callbacks": null}]'),
        ("application/json", "utf-8", {"compression": "application/x-gzip"}),
    ),
    "without content type or encoding": (b"[[], {}, {}]", (None, None, {})),
}
"""A delayed task's body, content type, content encoding and headers of its own."""


@pytest.mark.parametrize("case", AS_IT_CAME)
async def test_a_task_handed_back_goes_as_it_came(
    worker: Process, connection: aio_pika.abc.AbstractConnection, case: str
) -> None:
    """The copy took kombu's inflated body under the `compression` header, and was dead at its
    next delivery ("cannot decode a message"); kombu's publish gave a copy without a content type
    one of its own, its body serialized again."""
    body, (content_type, content_encoding, own) = AS_IT_CAME[case]
    task_id = str(uuid.uuid4())
    eta = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    headers: dict[str, aio_pika.abc.FieldValue] = {"task": canary.SUCCEED, "id": task_id}
    headers |= {"eta": eta} | own
    message = aio_pika.Message(
        body,
        headers=headers,
        content_type=content_type,
        content_encoding=content_encoding,
        correlation_id=task_id,
    )
    channel = await connection.channel(publisher_confirms=True)
    exchange = await channel.get_exchange(EXCHANGE, ensure=False)
    await exchange.publish(message, routing_key=DOCUMENT_QUEUE)

    copy = await handed_back(channel, task_id)

    assert copy.body == body
    assert (copy.content_type, copy.content_encoding) == (content_type, content_encoding)
    assert {name: copy.headers.get(name) for name in headers} == headers
    assert copy.correlation_id == task_id


async def test_a_compressed_task_handed_back_runs_when_due(
    worker: Process, connection: aio_pika.abc.AbstractConnection, reports: Reports
) -> None:
    """A compressed task due more than 5 s ahead (kombu's `compression="zlib"`, a stock client's
    `countdown=10`): handed back inflated under its compression header, it ended DEAD when it
    came back."""
    task_id = str(uuid.uuid4())
    message = task_message(canary.SUCCEED, task_id, kwargs={"report_to": reports.name})
    message.body = zlib.compress(message.body)
    message.headers |= {
        "compression": "application/x-gzip",
        "eta": (datetime.now(UTC) + timedelta(seconds=8)).isoformat(),
    }
    channel = await connection.channel(publisher_confirms=True)
    exchange = await channel.get_exchange(EXCHANGE, ensure=False)
    await exchange.publish(message, routing_key=DOCUMENT_QUEUE)

    await reports.wait_for(
        lambda r: r["task_id"] == task_id and r["event"] == "succeeded",
        timeout=30,
        what="the compressed task to run once due",
    )
    said = [line for line in worker.output().splitlines() if task_id in line]
    assert any("handed back to the broker's delay queues" in line for line in said), said
