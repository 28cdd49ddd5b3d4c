"""Failures are routed by RabbitMQ's dead-letter exchange, not acked away (issue: the spine)."""

from __future__ import annotations

import asyncio
import pickle
import uuid
from datetime import UTC, datetime, timedelta

import aio_pika
import pytest

from service.task_contract import PUBLISH_UNPUBLISHED
from service.topology import DEAD_LETTER_EXCHANGE, DOCUMENT_QUEUE, EXCHANGE, MAINTENANCE_QUEUE
from service.worker import canary
from service.worker.app import DocprocCelery
from tests.support import DeadLetterQueue, Process, Reports, eventually, first_death

pytestmark = [pytest.mark.rabbitmq, pytest.mark.worker]


async def test_a_task_that_raises_is_dead_lettered_as_rejected(
    worker: Process, client: DocprocCelery, reports: Reports, dead_letters: DeadLetterQueue
) -> None:
    result = client.send_task(canary.FAIL, kwargs={"report_to": reports.name})

    dead = await dead_letters.for_task(result.id)

    death = first_death(dead)
    assert death["reason"] == "rejected"
    assert death["queue"] == DOCUMENT_QUEUE
    assert worker.alive(), "no message stops the worker"
    assert death["exchange"] == EXCHANGE
    assert dead.routing_key == DOCUMENT_QUEUE  # x-dead-letter-routing-key
    assert dead.exchange == DEAD_LETTER_EXCHANGE
    assert await reports.events(result.id) == ["failing"], "a permanent failure is not retried"


async def test_an_expired_message_is_dead_lettered_not_acked_away(
    worker: Process, client: DocprocCelery, reports: Reports, dead_letters: DeadLetterQueue
) -> None:
    """Celery acks a message past its `expires` without running it: a retry that came after
    its task's expiry was gone, its run left RETRY for good."""
    result = client.send_task(
        canary.SUCCEED,
        kwargs={"report_to": reports.name},
        expires=datetime.now(UTC) - timedelta(seconds=1),
    )

    dead = await dead_letters.for_task(result.id)

    assert first_death(dead)["reason"] == "rejected"
    assert first_death(dead)["queue"] == DOCUMENT_QUEUE
    assert await reports.events(result.id) == [], "it did not run"
    assert worker.alive()


async def test_a_stale_maintenance_tick_is_dropped_not_dead_lettered(
    worker: Process, client: DocprocCelery, dead_letters: DeadLetterQueue
) -> None:
    """Beat's maintenance ticks expire after 10 minutes ("a run that overlaps the next one is
    pointless"): while the maintenance queue was not consumed — workers down, consuming paused by
    a store outage — each tick waiting past that became a dead letter and a failed run, forty
    every ten minutes. A stale tick is dropped; the next one does its work."""
    result = client.send_task(
        PUBLISH_UNPUBLISHED,
        queue=MAINTENANCE_QUEUE,
        expires=datetime.now(UTC) - timedelta(seconds=60),
    )

    async def dropped() -> bool | None:
        said = worker.output()
        return True if result.id in said and "dropped, the next one runs" in said else None

    await eventually(dropped, 30, "the stale tick to be dropped")
    assert not [m for m in await dead_letters.drained() if (m.headers or {}).get("id") == result.id]
    assert worker.alive()


async def test_an_expired_task_an_operator_revoked_stays_revoked_not_dead_lettered(
    worker: Process, client: DocprocCelery, reports: Reports, dead_letters: DeadLetterQueue
) -> None:
    """Celery marks an expired message revoked by id before it says it expired. A task that was
    revoked by someone, whose message then expired too, is acked as revoking asks — not
    dead-lettered for an operator to re-publish."""
    task_id = str(uuid.uuid4())
    replies = await asyncio.to_thread(client.control.revoke, task_id, reply=True, timeout=10)
    assert replies, "the worker took the revoke"
    client.send_task(
        canary.SUCCEED,
        task_id=task_id,
        kwargs={"report_to": reports.name},
        expires=datetime.now(UTC) - timedelta(seconds=1),
    )
    behind = client.send_task(canary.SUCCEED, kwargs={"report_to": reports.name})

    await reports.wait_for(
        lambda r: r["task_id"] == behind.id and r["event"] == "succeeded",
        what="the task behind it to run",
    )

    assert not [m for m in await dead_letters.drained() if (m.headers or {}).get("id") == task_id]
    assert await reports.events(task_id) == [], "it did not run"
    assert f"Discarding revoked task: {canary.SUCCEED}[{task_id}]" in worker.output()
    assert worker.alive()


async def test_a_hard_time_limit_ends_in_the_dead_letter_queue_not_in_a_requeue(
    worker: Process, client: DocprocCelery, reports: Reports, dead_letters: DeadLetterQueue
) -> None:
    result = client.send_task(
        canary.SLEEP,
        kwargs={"seconds": 60, "stubborn": True, "report_to": reports.name},
        soft_time_limit=1,
        time_limit=3,
    )

    dead = await dead_letters.for_task(result.id)

    death = first_death(dead)
    assert death["reason"] == "rejected"
    assert death["queue"] == DOCUMENT_QUEUE
    assert death["count"] == 1
    # A quorum queue counts returns to the queue; 0 means it died on its first delivery.
    assert (dead.headers or {}).get("x-delivery-count", 0) == 0, "it was requeued before dying"
    assert await reports.events(result.id) == ["sleeping", "ignoring the soft time limit"]


async def test_a_soft_time_limit_lets_the_task_fail_and_be_dead_lettered(
    worker: Process, client: DocprocCelery, reports: Reports, dead_letters: DeadLetterQueue
) -> None:
    result = client.send_task(
        canary.SLEEP, kwargs={"seconds": 60, "report_to": reports.name}, soft_time_limit=1
    )

    dead = await dead_letters.for_task(result.id)

    assert first_death(dead)["reason"] == "rejected"
    assert await reports.events(result.id) == ["sleeping"]


async def test_a_worker_process_that_dies_mid_task_ends_at_the_delivery_limit(
    worker: Process, client: DocprocCelery, reports: Reports, dead_letters: DeadLetterQueue
) -> None:
    result = client.send_task(canary.CRASH, kwargs={"report_to": reports.name})

    dead = await dead_letters.for_task(result.id, timeout=60)

    death = first_death(dead)
    events = await reports.events(result.id)
    # The default delivery limit is 5: the first delivery and five redeliveries, each one crashed.
    # A failure shows what the worker saw: once (CI, a loaded machine) this was `rejected`.
    assert (death["reason"], events) == ("delivery_limit", ["crashing"] * 6), (
        f"{death}\n{worker.tail(80)}"
    )
    assert death["queue"] == DOCUMENT_QUEUE
    assert worker.alive(), "the worker survives its pool processes dying"


def _celery_headers(task: str, task_id: str) -> dict[str, aio_pika.abc.FieldValue]:
    return {
        "lang": "py",
        "task": task,
        "id": task_id,
        "root_id": task_id,
        "parent_id": None,
        "group": None,
        "retries": 0,
        "argsrepr": "()",
        "kwargsrepr": "{}",
        "origin": "tests",
    }


@pytest.mark.parametrize(
    ("case", "task", "body", "content_type"),
    [
        ("undecodable bytes", canary.SUCCEED, b"\xff\xfe\x00{not json", "application/json"),
        ("unknown task", "docproc.no_such_task", b"[[], {}, {}]", "application/json"),
        (
            "pickle",
            canary.SUCCEED,
            pickle.dumps(((), {}, {})),
            "application/x-python-serialize",
        ),
        ("not a Celery message", None, b"hello, no headers at all", "text/plain"),
        # Celery itself raised KeyError('id') in the worker's main process for this one:
        (
            "a task body without headers",
            None,
            b'{"task": "docproc.canary.succeed"}',
            "application/json",
        ),
        ("a task header without an id", "no-id", b"[[], {}, {}]", "application/json"),
        (
            "a body that is not [args, kwargs, embed]",
            canary.SUCCEED,
            b'{"a": 1}',
            "application/json",
        ),
        ("an eta that is not a time", "bad-eta", b"[[], {}, {}]", "application/json"),
    ],
)
async def test_messages_the_worker_cannot_run_are_dead_lettered_byte_for_byte(
    worker: Process,
    connection: aio_pika.abc.AbstractConnection,
    dead_letters: DeadLetterQueue,
    case: str,
    task: str | None,
    body: bytes,
    content_type: str,
) -> None:
    marker = str(uuid.uuid4())
    headers = _celery_headers(task, marker) if task else {}
    if task == "no-id":
        headers = _celery_headers(canary.SUCCEED, marker)
        del headers["id"]
    elif task == "bad-eta":
        headers = _celery_headers(canary.SUCCEED, marker) | {"eta": "tomorrow"}
    channel = await connection.channel(publisher_confirms=True)
    exchange = await channel.get_exchange(EXCHANGE, ensure=False)
    await exchange.publish(
        aio_pika.Message(
            body,
            content_type=content_type,
            content_encoding="utf-8"
            if content_type != "application/x-python-serialize"
            else "binary",
            headers=headers,
            message_id=marker,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        ),
        routing_key=DOCUMENT_QUEUE,
    )

    dead = await dead_letters.wait_for(lambda m: m.message_id == marker, what=f"the {case} message")

    assert dead.body == body
    assert dead.content_type == content_type
    death = first_death(dead)
    assert death["reason"] == "rejected"
    assert death["queue"] == DOCUMENT_QUEUE
