"""The DLQ consumer drains docproc.dead_letter into the store: every message, exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aio_pika
import psycopg
import pytest
import pytest_asyncio
from pamqp.commands import Basic
from sqlalchemy import func, select

from service.deadletters import consumer as dlq
from service.deadletters.consumer import raw_message
from service.errors import DatabaseError, StoreUnavailable
from service.store import dead_letters, leases, ledger
from service.store.database import AsyncStore, Store
from service.store.schema import dead_letters as table
from service.task_protocol import UNREADABLE_PROPERTIES as UNREADABLE
from service.topology import DEAD_LETTER_QUEUE, DOCUMENT_QUEUE, MAINTENANCE_QUEUE, RETRY_QUEUE
from tests.support import (
    Process,
    RabbitMQ,
    Vhost,
    delete_vhost,
    docproc_command,
    eventually,
    peak_kib,
    rabbitmqctl_on,
    start_dlq,
    topology_vhost,
)

pytestmark = [pytest.mark.rabbitmq]

PER_ORIGIN = 250


@contextlib.asynccontextmanager
async def declared_vhost(rabbitmq: RabbitMQ, store: Path, **env: str) -> AsyncIterator[Vhost]:
    """`topology_vhost` for the block: docproc's topology declared with `env`, the SQLite
    store at `store` (a test may point its processes at another)."""
    vhost = await topology_vhost(rabbitmq, f"sqlite:///{store}", **env)
    try:
        yield vhost
    finally:
        await delete_vhost(rabbitmq, vhost.name)


@pytest_asyncio.fixture(loop_scope="session")
async def dlq_vhost(rabbitmq: RabbitMQ, tmp_path: Path) -> AsyncIterator[Vhost]:
    """A vhost with the topology (delivery limit 1: poison messages die quickly), no worker."""
    async with declared_vhost(
        rabbitmq, tmp_path / "docproc.db", DOCPROC_DELIVERY_LIMIT="1"
    ) as vhost:
        yield vhost


async def publish(
    channel: aio_pika.abc.AbstractChannel, queue: str, messages: list[aio_pika.Message]
) -> None:
    exchange = await channel.get_exchange("docproc", ensure=False)
    await asyncio.gather(*(exchange.publish(m, routing_key=queue) for m in messages))


def celery_message(task_id: str) -> aio_pika.Message:
    return aio_pika.Message(
        b'[["doc"], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]',
        content_type="application/json",
        content_encoding="utf-8",
        headers={
            "lang": "py",
            "task": "docproc.document.process",
            "id": task_id,
            "root_id": task_id,
            "retries": 0,
        },
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )


async def kill_messages(vhost: Vhost) -> dict[str, int]:
    """Make 4 x PER_ORIGIN messages die on the real broker, each way one can: rejected by a
    consumer, redelivered past the delivery limit, expired by per-message TTL, malformed bytes."""
    connection = await vhost.connect()
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await publish(
            channel, DOCUMENT_QUEUE, [celery_message(str(uuid.uuid4())) for _ in range(PER_ORIGIN)]
        )
        await publish(
            channel,
            DOCUMENT_QUEUE,
            [
                aio_pika.Message(os.urandom(64), content_type="application/octet-stream")
                for _ in range(PER_ORIGIN)
            ],
        )
        await publish(
            channel, RETRY_QUEUE, [celery_message(str(uuid.uuid4())) for _ in range(PER_ORIGIN)]
        )
        await publish(
            channel,
            MAINTENANCE_QUEUE,
            [
                aio_pika.Message(f"expiring {i}".encode(), expiration=0.01)
                for i in range(PER_ORIGIN)
            ],
        )

        consumer = await connection.channel()
        await consumer.set_qos(prefetch_count=100)
        handled: Counter[str] = Counter()

        async def reject(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            await message.reject(requeue=False)
            handled["rejected"] += 1

        async def requeue(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            await message.nack(requeue=True)  # a worker that dies: back to the queue, again
            handled["requeued"] += 1

        await (await consumer.get_queue(DOCUMENT_QUEUE, ensure=False)).consume(reject)
        await (await consumer.get_queue(RETRY_QUEUE, ensure=False)).consume(requeue)

        async def all_dead() -> bool | None:
            async with vhost.management() as management:
                queues = {q.name: q for q in await management.queues()}
            # messages_dlx: dead, but held by their source queue until the DLQ confirms them.
            work = [
                queues[n].messages + queues[n].messages_dlx
                for n in (DOCUMENT_QUEUE, RETRY_QUEUE, MAINTENANCE_QUEUE)
            ]
            return True if handled["rejected"] >= 2 * PER_ORIGIN and sum(work) == 0 else None

        await eventually(all_dead, 60, "every message to die", interval=0.5)
        await consumer.close()
    return dict(handled)


def stored(url: str) -> Counter[tuple[str, str]]:
    store = Store(url)
    try:
        rows = store.run(dead_letters.counts)
    finally:
        store.close()
    return Counter({(reason, queue): n for reason, queue, n in rows})


def record_count(url: str) -> int:
    store = Store(url)
    try:
        return int(
            store.run(lambda c: c.execute(select(func.count()).select_from(table)).scalar_one())
        )
    finally:
        store.close()


EXPECTED = Counter(
    {
        ("rejected", DOCUMENT_QUEUE): 2 * PER_ORIGIN,
        ("delivery_limit", RETRY_QUEUE): PER_ORIGIN,
        ("expired", MAINTENANCE_QUEUE): PER_ORIGIN,
    }
)


async def wait_for_records(vhost: Vhost, url: str, count: int, timeout: float = 60) -> None:
    async def enough() -> bool | None:
        return True if await asyncio.to_thread(record_count, url) >= count else None

    try:
        await eventually(enough, timeout, f"{count} dead-letter records", interval=0.25)
    except AssertionError as short:
        # Where the rest is: still in the DLQ, or held by a source queue (messages_dlx).
        async with vhost.management() as management:
            queues = [
                f"{q.name} {q.messages_ready}/{q.messages_unacknowledged}/{q.messages_dlx}"
                for q in await management.queues()
                if q.messages or q.messages_dlx
            ]
        raise AssertionError(
            f"{short}: {record_count(url)} stored; queues (ready/unacked/held as messages_dlx): "
            f"{queues}"
        ) from None


EVERY_PROPERTY = Basic.Properties(
    content_type="application/json",
    content_encoding="utf-8",
    headers={"task": "docproc.document.process", "when": datetime(2026, 1, 2, tzinfo=UTC)},
    delivery_mode=2,
    priority=7,
    correlation_id="c-1",
    reply_to="replies",
    expiration="3600",
    message_id="m-1",
    timestamp=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    message_type="kind",
    user_id="guest",
    app_id="app",
)


@pytest.mark.parametrize(
    "properties", [EVERY_PROPERTY, Basic.Properties()], ids=["every property", "none"]
)
async def test_a_delivery_is_read_as_aio_pika_reads_it(
    dlq_vhost: Vhost, properties: Basic.Properties
) -> None:
    """The consumer reads deliveries off aiormq, below aio-pika; the properties it stores (and a
    re-publish hands back to aio-pika) are still those aio-pika's own message gives."""
    connection = await dlq_vhost.connect()
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(exclusive=True)
        underlay = await channel.get_underlay_channel()
        await underlay.basic_publish(b"body", routing_key=queue.name, properties=properties)
        seen = await eventually(lambda: queue.get(fail=False), 10, "the message")
        await seen.nack(requeue=True)  # the same delivery again, below aio-pika this time
        got = await underlay.basic_get(queue.name, no_ack=True)
    names = ("content_type", "content_encoding", "delivery_mode", "priority", "correlation_id")
    names += ("reply_to", "expiration", "message_id", "timestamp", "type", "user_id", "app_id")
    read = raw_message(got)
    assert read.properties == {
        name: int(value) if name == "delivery_mode" else value
        for name in names
        if (value := getattr(seen, name)) is not None
    }
    assert (read.body, read.headers) == (b"body", seen.headers)
    assert (read.routing_key, read.redelivered) == (queue.name, True)


async def test_a_thousand_dead_messages_of_mixed_origin_become_exactly_a_thousand_records(
    dlq_vhost: Vhost, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'docproc.db'}"
    consumer = await start_dlq(dlq_vhost, tmp_path / "dlq.log", DOCPROC_DATABASE_URL=url)
    try:
        await kill_messages(dlq_vhost)
        await wait_for_records(dlq_vhost, url, 4 * PER_ORIGIN)
        async with dlq_vhost.management() as management:
            dlq = await management.queue("docproc.dead_letter")
        assert dlq is not None
    finally:
        assert consumer.stop() == 0, consumer.tail()

    assert record_count(url) == 4 * PER_ORIGIN
    assert stored(url) == EXPECTED


async def test_a_consumer_killed_mid_batch_and_restarted_still_stores_each_message_once(
    dlq_vhost: Vhost, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'docproc.db'}"
    await kill_messages(dlq_vhost)  # all 1000 wait in the dead-letter queue
    consumer = Process(
        docproc_command("serve", "dlq"),
        dlq_vhost.env(DOCPROC_DATABASE_URL=url),
        tmp_path / "dlq-1.log",
    )

    async def storing() -> bool | None:
        try:
            return True if await asyncio.to_thread(record_count, url) > 0 else None
        except DatabaseError:  # not migrated yet
            return None

    await eventually(storing, 30, "the first records", interval=0.005)
    # Freeze it wherever it is (records committed, acks in flight), then kill it there.
    consumer.popen.send_signal(signal.SIGSTOP)
    consumer.popen.send_signal(signal.SIGKILL)
    assert consumer.stop() == -signal.SIGKILL
    assert 0 < record_count(url) < 4 * PER_ORIGIN, "the kill came too late to prove anything"

    restarted = await start_dlq(dlq_vhost, tmp_path / "dlq-2.log", DOCPROC_DATABASE_URL=url)
    try:
        await wait_for_records(dlq_vhost, url, 4 * PER_ORIGIN)
        async with dlq_vhost.management() as management:

            async def drained() -> bool | None:
                queue = await management.queue("docproc.dead_letter")
                return True if queue is not None and queue.messages == 0 else None

            await eventually(drained, 30, "the dead-letter queue to drain")
    finally:
        assert restarted.stop() == 0, restarted.tail()

    assert record_count(url) == 4 * PER_ORIGIN
    assert stored(url) == EXPECTED


@pytest.mark.postgres
async def test_while_the_store_is_down_nothing_is_lost_and_it_resumes_on_its_own(
    dlq_vhost: Vhost, tmp_path: Path, postgres_url: str
) -> None:
    from service.store.migrations import upgrade

    admin = postgres_url.rsplit("/", 1)[0] + "/postgres"
    name = f"docproc_down_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    url = postgres_url.rsplit("/", 1)[0] + f"/{name}"
    upgrade(url)
    consumer = await start_dlq(dlq_vhost, tmp_path / "dlq.log", DOCPROC_DATABASE_URL=url)
    try:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            connection.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
            )
        await kill_messages(dlq_vhost)

        async with dlq_vhost.management() as management:

            async def kept_in_the_queue() -> bool | None:
                queue = await management.queue("docproc.dead_letter")
                return True if queue is not None and queue.messages == 4 * PER_ORIGIN else None

            await eventually(kept_in_the_queue, 30, "the dead letters to wait in their queue")
        assert consumer.alive(), "the consumer must wait for the store, not crash"
        assert "the store failed" in consumer.output()

        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await wait_for_records(dlq_vhost, url, 4 * PER_ORIGIN, timeout=90)
        assert consumer.stop() == 0, consumer.tail()

        assert record_count(url) == 4 * PER_ORIGIN
        assert stored(url) == EXPECTED
    finally:
        consumer.stop()
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.node_wide
async def test_a_broker_restart_is_survived_and_consuming_resumes_on_its_own(
    dlq_vhost: Vhost, tmp_path: Path, rabbitmq: RabbitMQ
) -> None:
    rabbitmqctl = rabbitmqctl_on(rabbitmq)
    url = f"sqlite:///{tmp_path / 'docproc.db'}"
    consumer = await start_dlq(dlq_vhost, tmp_path / "dlq.log", DOCPROC_DATABASE_URL=url)
    try:
        await asyncio.to_thread(rabbitmqctl, "stop_app")
        await asyncio.to_thread(rabbitmqctl, "start_app")
        await asyncio.to_thread(rabbitmqctl, "await_startup")

        await kill_messages(dlq_vhost)
        await wait_for_records(dlq_vhost, url, 4 * PER_ORIGIN, timeout=90)

        assert consumer.alive(), "a broker restart is no reason to exit"
        assert "lost the broker" in consumer.output()
    finally:
        assert consumer.stop() == 0, consumer.tail()
    assert stored(url) == EXPECTED


IDENTICAL = 600


async def load_identical(vhost: Vhost, count: int) -> None:
    """`count` dead messages alike to the byte — one message_id, the same death — straight into
    docproc.dead_letter (as RabbitMQ would route them through docproc.dlx)."""
    await load_bodies(vhost, [celery_message("the-same-task").body] * count)


SAME_MESSAGE_ID = "the-same-message"
"""The message_id of every message `load_bodies` publishes. Given none, aiormq stamps a random one
on each: the "identical" messages these tests publish were not, and the ledger never had to match
a message that came back among its twins."""


async def load_bodies(vhost: Vhost, bodies: list[bytes]) -> None:
    """A dead message for each body, in order, alike but for the body (one message_id, the same
    death), straight into docproc.dead_letter as RabbitMQ would route them through docproc.dlx."""
    died = datetime(2026, 1, 1, tzinfo=UTC)
    connection = await vhost.connect()
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange("docproc.dlx", ensure=False)
        headers = dict(celery_message("the-same-task").headers or {}) | {
            "x-death": [{"count": 1, "reason": "rejected", "queue": DOCUMENT_QUEUE, "time": died}]
        }
        await asyncio.gather(
            *(
                exchange.publish(
                    aio_pika.Message(
                        body,
                        headers=headers,
                        content_type="application/json",
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        message_id=SAME_MESSAGE_ID,
                    ),
                    routing_key=DOCUMENT_QUEUE,
                )
                for body in bodies
            )
        )


def peak_rss(pid: int) -> int:
    """The most resident memory a running process has had, in bytes."""
    peak = peak_kib(pid)
    assert peak is not None, f"no VmHWM for process {pid}"
    return peak * 1024


def stored_bodies(url: str) -> Counter[bytes]:
    store = Store(url)
    try:
        rows = store.run(lambda c: c.execute(select(table.c.body)).scalars().all())
    finally:
        store.close()
    return Counter(bytes(body) for body in rows)


MIB = 1024 * 1024


@pytest.mark.parametrize("queue_type", ["quorum", "classic"])
async def test_large_dead_letters_stay_within_the_batch_budget_and_are_each_stored_once(
    rabbitmq: RabbitMQ, tmp_path: Path, queue_type: str
) -> None:
    """A batch is up to 250 dead letters and a message may be 128 MiB: without a budget of
    bytes, the consumer held every large letter of the queue at once (here 128 MiB: its peak
    memory grew by 95-111 MiB with 96 of them). Within an 8 MiB budget it hands the channel's
    deliveries back when they pass it and takes two 4 MiB letters at a time; identical large
    letters stay as many records, and the small ones between them are stored as well. On a
    classic queue, the hand-over's peeked letter beside a prefetch of two passed the budget at
    every channel, for ever, until it became a batch of its own."""
    url = f"sqlite:///{tmp_path / 'docproc.db'}"
    large = [os.urandom(4 * MIB) for _ in range(26)] + [b"L" * 4 * MIB] * 6
    small = [f"small {n}".encode() for n in range(40)]
    bodies = [body for pair in zip(large, small, strict=False) for body in pair] + small[
        len(large) :
    ]
    async with declared_vhost(
        rabbitmq, tmp_path / "docproc.db", DOCPROC_QUEUE_TYPE=queue_type
    ) as vhost:
        consumer = await start_dlq(
            vhost,
            tmp_path / "dlq.log",
            DOCPROC_DATABASE_URL=url,
            DOCPROC_DEAD_LETTER_BATCH_BYTES=str(8 * MIB),
        )
        try:
            ready = peak_rss(consumer.popen.pid)
            await load_bodies(vhost, bodies)
            await wait_for_records(vhost, url, len(bodies))
            await dead_letter_queue_drained(vhost)
            grown = peak_rss(consumer.popen.pid) - ready
        finally:
            assert consumer.stop() == 0, consumer.tail()

    assert stored_bodies(url) == Counter(bodies)
    assert grown < 64 * MIB, f"the consumer's peak memory grew by {grown / MIB:.0f} MiB"
    assert "handing them back and consuming 2 at a time" in consumer.output()


async def dead_letter_queue_drained(vhost: Vhost) -> None:
    async with vhost.management() as management:

        async def drained() -> bool | None:
            queue = await management.queue("docproc.dead_letter")
            return True if queue is not None and queue.messages == 0 else None

        await eventually(drained, 60, "the dead-letter queue to drain")


@pytest.mark.parametrize("point", ["before-commit", "after-commit", "after-ack"])
async def test_identical_messages_stay_as_many_records_wherever_the_consumer_is_killed(
    dlq_vhost: Vhost, tmp_path: Path, point: str
) -> None:
    url = f"sqlite:///{tmp_path / 'docproc.db'}"
    await load_identical(dlq_vhost, IDENTICAL)
    doomed = Process(
        docproc_command("serve", "dlq"),
        dlq_vhost.env(DOCPROC_DATABASE_URL=url, DOCPROC_FAULT_INJECTION=point),
        tmp_path / "dlq-killed.log",
    )
    status = await asyncio.to_thread(doomed.popen.wait, 60)
    output = doomed.output()
    doomed.stop()
    assert status == -signal.SIGKILL, output
    assert f"killing the DLQ consumer {point}" in output
    committed = record_count(url)
    if point == "before-commit":
        assert committed == 0
    else:
        assert 0 < committed < IDENTICAL, "killed after its first batch was committed"

    consumer = await start_dlq(dlq_vhost, tmp_path / "dlq.log", DOCPROC_DATABASE_URL=url)
    try:
        await wait_for_records(dlq_vhost, url, IDENTICAL)
        await dead_letter_queue_drained(dlq_vhost)
    finally:
        assert consumer.stop() == 0, consumer.tail()

    assert record_count(url) == IDENTICAL


async def test_a_second_consumer_stands_by_and_takes_over_when_the_first_stops(
    dlq_vhost: Vhost, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'docproc.db'}"
    first = await start_dlq(dlq_vhost, tmp_path / "dlq-1.log", DOCPROC_DATABASE_URL=url)
    second = Process(
        docproc_command("serve", "dlq"),
        dlq_vhost.env(DOCPROC_DATABASE_URL=url),
        tmp_path / "dlq-2.log",
    )
    try:

        async def standing_by() -> bool | None:
            return True if "standing by" in second.output() else None

        await eventually(standing_by, 30, "the second consumer to stand by")
        assert first.stop() == 0, first.tail()
        await load_identical(dlq_vhost, 300)
        await wait_for_records(dlq_vhost, url, 300)
        await dead_letter_queue_drained(dlq_vhost)
    finally:
        second.stop()

    assert "holding the DLQ consumer lease" in second.output()
    assert record_count(url) == 300


class FreezingStore(AsyncStore):
    """A holder's store that stops answering right after its first batch commits — the holder
    frozen (a stopped process, a paused VM) between its commit and its ack, lease renewals and
    all — until `thaw`."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.frozen = asyncio.Event()
        self.thaw = asyncio.Event()

    async def write(self, operation: Any, *args: Any, **kwargs: Any) -> Any:
        if self.frozen.is_set():
            await self.thaw.wait()
        result = await super().write(operation, *args, **kwargs)
        if operation is dlq.store_batch:
            self.frozen.set()
            await self.thaw.wait()
        return result


async def test_a_holder_frozen_between_commit_and_ack_has_its_batch_stored_once(
    rabbitmq: RabbitMQ, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a classic queue the holder's consumer, cancelled while it stores, is not counted: the
    standby that took the lease over peeked at once, found no batch come back, and cleared the
    frozen holder's rows — when the holder died its batch came back and was stored again. With
    another process's rows in the ledger, the standby now waits (HANDOVER_WAIT after taking the
    lease; 3 s here) before settling them. Scaled: a lease of 1.2 s."""
    monkeypatch.setattr(dlq, "LEASE_TTL", 1.2)
    monkeypatch.setattr(dlq, "HANDOVER_WAIT", 3.0)
    async with declared_vhost(
        rabbitmq, tmp_path / "docproc.db", DOCPROC_QUEUE_TYPE="classic"
    ) as vhost:
        url = vhost.settings().resolved_database_url
        await publish_bodies(vhost, [b"one", b"two", b"three"])
        holder_store = FreezingStore(url)
        holder = dlq.DeadLetterConsumer(vhost.settings(), holder_store)
        holder_task = asyncio.create_task(holder.run(asyncio.Event()))
        standby_store = AsyncStore(url)
        standby = dlq.DeadLetterConsumer(vhost.settings(), standby_store)
        standby_stop = asyncio.Event()
        standby_task: asyncio.Task[None] | None = None
        try:

            async def frozen() -> bool | None:
                return True if holder_store.frozen.is_set() else None

            await eventually(frozen, 30, "the holder to commit its batch")
            assert record_count(url) == 3  # committed, not acked
            await publish_bodies(vhost, [b"four"])  # a fresh letter behind them
            standby_task = asyncio.create_task(standby.run(standby_stop))

            async def taken_over() -> bool | None:
                holding = await standby_store.run(leases.holder, dlq.LEASE)
                return True if holding == standby.session else None

            await eventually(taken_over, 20, "the standby to take the lease over")
            holder_task.cancel()  # the frozen holder dies: its channel closes, unacked
            with contextlib.suppress(asyncio.CancelledError):
                await holder_task

            async def all_stored() -> bool | None:
                return True if standby.stored >= 4 or record_count(url) > 4 else None

            await eventually(all_stored, 30, "the standby to store what came back")
        finally:
            standby_stop.set()
            holder_store.thaw.set()
            if standby_task is not None:
                await asyncio.wait_for(standby_task, 30)
            await standby_store.close()
            await holder_store.close()
        assert record_count(url) == 4, "4 dead messages, each stored once"


class ClearRefusedOnce(AsyncStore):
    """A store that refuses the first clear of a channel's ledger rows — the one made once the
    channel's ack is in — as an outage would."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.refused = False

    async def write(self, operation: Any, *args: Any, **kwargs: Any) -> Any:
        if operation is ledger.clear and args and not self.refused:
            self.refused = True
            raise StoreUnavailable("the store is down (injected after the ack)")
        return await super().write(operation, *args, **kwargs)


async def test_rows_of_an_acked_batch_are_not_taken_by_a_handed_back_twin(
    dlq_vhost: Vhost, tmp_path: Path
) -> None:
    """Letters past the byte budget go back to the queue unstored, marked redelivered. The next
    channel stored one of them; the store failed as it cleared that batch's rows after the ack;
    and the channel after it peeked one of the twins still handed back — redelivered, so a batch
    seemed to have come back — kept the rows, and the twin took its sibling's row: stored as the
    sibling, one record fewer. A batch whose ack is in has its rows dropped before the next
    peek."""
    url = dlq_vhost.settings().resolved_database_url
    body = b"L" * 400
    await load_bodies(dlq_vhost, [body] * 8)
    store = ClearRefusedOnce(url)
    consumer = dlq.DeadLetterConsumer(dlq_vhost.settings(), store, batch_bytes=1000)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:

        async def taken() -> bool | None:
            return True if store.refused and not await ready_count(dlq_vhost) else None

        await eventually(taken, 60, "the consumer to take every letter")
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)  # it stores the batch in hand before it returns
        await store.close()
    assert not await ready_count(dlq_vhost), "every letter was acked"
    assert stored_bodies(url) == Counter({body: 8})


async def ready_count(vhost: Vhost) -> int:
    """The dead letters ready in the DLQ, as RabbitMQ counts them now (not the management
    API's sampled figures)."""
    connection = await vhost.connect()
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(DEAD_LETTER_QUEUE, passive=True)
        return int(queue.declaration_result.message_count or 0)


async def publish_bodies(vhost: Vhost, bodies: list[bytes]) -> None:
    connection = await vhost.connect()
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        for body in bodies:
            await channel.default_exchange.publish(
                aio_pika.Message(body), routing_key=DEAD_LETTER_QUEUE
            )


async def test_the_broker_connection_lost_while_a_batch_commits_is_reconnected_to(
    dlq_vhost: Vhost, tmp_path: Path
) -> None:
    """The connection closes (a failover, a blip: here the management API closes it) while a
    batch waits for its commit — held by a write lock taken from outside. The consumer
    reconnects, where it once exited on aiormq's ChannelInvalidStateError, and each message
    ends as one record."""
    database = tmp_path / "docproc.db"
    url = f"sqlite:///{database}"
    consumer = await start_dlq(dlq_vhost, tmp_path / "dlq.log", DOCPROC_DATABASE_URL=url)
    lock = sqlite3.connect(database, timeout=30, isolation_level=None)
    try:
        lock.execute("BEGIN IMMEDIATE")  # the consumer's next commit waits (busy timeout)
        await kill_messages(dlq_vhost)
        async with dlq_vhost.management() as management:

            async def in_hand() -> list[str] | None:
                queue = await management.queue("docproc.dead_letter")
                if queue is None or not queue.messages_unacknowledged:
                    return None
                path = f"/api/vhosts/{quote(dlq_vhost.name, safe='')}/connections"
                found = (await management._request("GET", path)).json()
                named = [(c["name"], c.get("user_provided_name") or "") for c in found]
                return [name for name, given in named if given.startswith("docproc dlq")] or None

            names = await eventually(in_hand, 30, "a batch in the consumer's hands")
            for name in names:
                closed = await management._request("DELETE", f"/api/connections/{quote(name)}")
                assert closed.status_code in (200, 204), closed.text
        lock.execute("ROLLBACK")
        await wait_for_records(dlq_vhost, url, 4 * PER_ORIGIN, timeout=90)
        assert consumer.alive(), consumer.tail()
        assert "lost the broker" in consumer.output()
    finally:
        lock.close()
        assert consumer.stop() == 0, consumer.tail()
    assert stored(url) == EXPECTED


def nested(depth: int) -> dict[str, object]:
    value: dict[str, object] = {"leaf": "x"}
    for _ in range(depth):
        value = {"k": value}
    return value


async def test_a_message_whose_properties_cannot_be_read_is_stored_and_so_is_what_follows(
    dlq_vhost: Vhost, tmp_path: Path
) -> None:
    """A header table nested 600 deep: RabbitMQ passes it on, pamqp cannot read it back (its
    recursion ends first), and its error once ended the consumer's connection at every delivery
    — nothing behind it was stored again. Now the letter is stored with its properties as bytes
    and pamqp's error, the letters around it as ever, and the consumer stays up."""
    url = f"sqlite:///{tmp_path / 'docproc.db'}"
    died = {"count": 1, "reason": "rejected", "queue": DOCUMENT_QUEUE, "time": datetime.now(UTC)}
    connection = await dlq_vhost.connect()
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        ordinary = [
            aio_pika.Message(f"ordinary {n}".encode(), headers={"x-death": [died]})
            for n in range(3)
        ]
        hostile = aio_pika.Message(b"hostile", headers={"x-nested": nested(600)})
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(20_000)  # for this process to encode it
        try:
            for message in (ordinary[0], hostile, *ordinary[1:]):
                await channel.default_exchange.publish(message, routing_key=DEAD_LETTER_QUEUE)
        finally:
            sys.setrecursionlimit(limit)
    consumer = await start_dlq(dlq_vhost, tmp_path / "dlq.log", DOCPROC_DATABASE_URL=url)
    try:
        await wait_for_records(dlq_vhost, url, 4, timeout=30)
        assert consumer.alive(), consumer.tail()
    finally:
        assert consumer.stop() == 0, consumer.tail()
    store = Store(url)
    try:
        letters = store.run(lambda c: c.execute(select(table.c.body, table.c.headers)).all())
    finally:
        store.close()
    assert sorted(body for body, _ in letters) == [
        b"hostile",
        b"ordinary 0",
        b"ordinary 1",
        b"ordinary 2",
    ]
    [headers] = [headers for body, headers in letters if body == b"hostile"]
    assert headers[UNREADABLE]["error"].startswith("RecursionError")
    assert headers[UNREADABLE]["properties"]  # the raw bytes, kept
