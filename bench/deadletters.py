"""Dead letters and redrive.

Dead letters: records stored per second by `docproc serve dlq` draining N dead messages loaded
into `docproc.dead_letter` before it starts, against an aio-pika consumer that only acks, with
the same prefetch. Rates run from the first record to the last (store timestamps) and from the
first delivery to the last ack.

Redrive: messages re-published per second by `POST /dead-letters/redrive` at the highest rate
the API allows, progress read until it finishes, against raw confirmed publishing of the same
bodies and headers to the same queue — one at a time, and pipelined (the mark: the runner keeps
its confirms in flight together and writes each group's outcomes in one transaction).
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
import httpx
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from sqlalchemy import Connection, func, select

from bench.harness import BenchError, Session, alternate, eventually
from bench.load import drive
from bench.report import Comparison, median
from bench.submit import purge
from service.broker.publisher import task_message
from service.deadletters.consumer import BATCH_SIZE
from service.deadletters.parsing import RawMessage, read
from service.errors import DatabaseError
from service.ids import new_id
from service.store import outcomes
from service.store.database import Store
from service.store.schema import dead_letters as table
from service.task_contract import PROCESS_DOCUMENT
from service.topology import DEAD_LETTER_QUEUE, DOCUMENT_QUEUE, EXCHANGE

PREFETCH = BATCH_SIZE
"""The DLQ consumer's prefetch (its batch); the raw consumer gets the same."""
MAX_REDRIVE_RATE = 10_000.0
"""The highest `rate` POST /dead-letters/redrive accepts (messages per second)."""
EPOCH = datetime(2001, 1, 1, tzinfo=UTC)


def batch_day(batch: int) -> datetime:
    """Each batch dies on a day of its own, so a `since`/`until` filter picks exactly it."""
    return EPOCH + timedelta(days=batch)


def dead_message(batch: int, index: int) -> aio_pika.Message:
    """A document task as RabbitMQ dead-letters it after a worker rejected it, with ids as
    docproc's intake makes them."""
    task_id = new_id()
    message = task_message(
        PROCESS_DOCUMENT, task_id, kwargs={"document_id": new_id()}, correlation_id=task_id
    )
    died = batch_day(batch) + timedelta(microseconds=index)
    headers: dict[str, Any] = dict(message.headers or {})
    headers |= {
        "x-death": [
            {
                "count": 1,
                "reason": "rejected",
                "queue": DOCUMENT_QUEUE,
                "time": died,
                "exchange": EXCHANGE,
                "routing-keys": [DOCUMENT_QUEUE],
            }
        ],
        "x-first-death-reason": "rejected",
        "x-first-death-queue": DOCUMENT_QUEUE,
        "x-first-death-exchange": EXCHANGE,
    }
    message.headers = headers
    return message


async def load_dead_letters(
    channel: AbstractChannel, batch: int, count: int, *, first: int = 0
) -> None:
    """Put `count` dead messages of `batch` into docproc.dead_letter, confirmed."""

    async def publish(index: int) -> None:
        await channel.default_exchange.publish(
            dead_message(batch, first + index), routing_key=DEAD_LETTER_QUEUE
        )

    await drive(count, 64, publish)


def stored(connection: Connection, batch: int) -> tuple[int, float]:
    """How many records of `batch` are stored, and the seconds from the first to the last."""
    day = batch_day(batch)
    c = table.c
    count, first, last = connection.execute(
        select(func.count(), func.min(c.stored_at), func.max(c.stored_at)).where(
            c.dead_at >= day, c.dead_at < day + timedelta(days=1)
        )
    ).one()
    return int(count), (last - first).total_seconds() if count else 0.0


async def ack_only(channel: AbstractChannel, count: int) -> float:
    """Drain `count` messages, acking each: messages per second from first delivery to last ack."""
    await channel.set_qos(prefetch_count=PREFETCH)
    queue = await channel.get_queue(DEAD_LETTER_QUEUE, ensure=False)
    done = asyncio.Event()
    times: list[float] = []

    async def on_message(message: AbstractIncomingMessage) -> None:
        times.append(time.perf_counter())
        await message.ack()
        if len(times) >= count:
            times.append(time.perf_counter())
            done.set()

    tag = await queue.consume(on_message)
    try:
        await asyncio.wait_for(done.wait(), 30 + count / 100)
    finally:
        await queue.cancel(tag)
    return (count - 1) / (times[-1] - times[0])


def _latest_death(connection: Connection) -> datetime | None:
    latest: datetime | None = connection.scalar(select(func.max(table.c.dead_at)))
    return latest


class _Batches:
    """Batch numbers, each a day of its own for its dead letters: from the day after the latest
    a letter in the store died on — a reused PostgreSQL database keeps an earlier run's letters,
    whose days a count from 1 would take again — then one more each time."""

    def __init__(self) -> None:
        self.last: int | None = None

    def next(self, store: Store) -> int:
        if self.last is None:
            try:
                latest = store.run(
                    lambda connection: connection.scalar(select(func.max(table.c.dead_at)))
                )
            except DatabaseError:  # not migrated yet: an empty store
                latest = None
            self.last = 0 if latest is None else max(0, (latest - EPOCH).days)
        self.last += 1
        return self.last


_batches = _Batches()


def next_batch(store: Store) -> int:
    """A batch number no other round used: its dead letters get their own day."""
    return _batches.next(store)


async def measure(run: Session) -> None:
    options = run.options
    count = options.dead_letters
    store = run.store()
    cpu: list[float] = []
    connection = await aio_pika.connect(run.broker_url)
    try:
        publisher = await connection.channel(publisher_confirms=True)

        async def baseline() -> float:
            await load_dead_letters(publisher, next_batch(store), count)
            consumer = await connection.channel()
            try:
                return await ack_only(consumer, count)
            finally:
                await consumer.close()

        async def docproc() -> float:
            batch = next_batch(store)
            await asyncio.to_thread(run.vacuum, "dead_letter_ledger", "task_runs", "dead_letters")
            await load_dead_letters(publisher, batch, count)
            dlq, _ = await run.start_docproc("dlq")
            before = dlq.cpu()
            try:

                async def all_stored() -> float | None:
                    dlq.check()
                    found, seconds = await asyncio.to_thread(store.run, stored, batch)
                    return (count - 1) / seconds if found >= count and seconds > 0 else None

                rate = await eventually(all_stored, 30 + count / 100, f"{count} dead letters")
                cpu.append((dlq.cpu() - before) / count * 1e6)
                return rate
            finally:
                run.stop(dlq)

        rounds = await alternate(options.rounds, {"baseline": baseline, "docproc": docproc})
    finally:
        await connection.close()
        store.close()
    run.report.compare(
        Comparison(
            measure="deadletters",
            figure="dead letters stored",
            unit="/s",
            baseline_name=f"aio-pika consumer that only acks, prefetch {PREFETCH}",
            docproc=rounds["docproc"],
            baseline=rounds["baseline"],
            target=0.8,
            details={
                "messages": f"{count} pre-loaded per round",
                "DLQ consumer CPU µs per record": median(cpu),
            },
        )
    )


def load_store(connection: Connection, batch: int, count: int) -> list[aio_pika.Message]:
    """`count` dead letters of `batch` stored as the DLQ consumer stores them; returns their
    messages as they first were (without death headers), for the raw baseline to publish."""
    messages = []
    for index in range(count):
        message = dead_message(batch, index)
        raw = RawMessage(
            body=message.body,
            headers=dict(message.headers or {}),
            properties={
                "content_type": message.content_type,
                "content_encoding": message.content_encoding,
                "delivery_mode": 2,
                "priority": 0,
                "correlation_id": message.correlation_id,
                "message_id": message.message_id,
            },
            routing_key=DEAD_LETTER_QUEUE,
        )
        outcomes.letters_arrived(connection, [read(raw)])
        headers = {k: v for k, v in raw.headers.items() if not k.startswith(("x-death", "x-first"))}
        messages.append(
            aio_pika.Message(
                message.body,
                headers=headers,
                content_type=message.content_type,
                content_encoding=message.content_encoding,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                priority=0,
                correlation_id=message.correlation_id,
                message_id=message.message_id,
            )
        )
    return messages


async def measure_redrive(run: Session) -> None:
    options = run.options
    count = options.redrive_letters
    store = run.store()
    api, url = await run.start_docproc("api")
    assert url is not None
    api_cpu: list[float] = []
    connection = await aio_pika.connect(run.broker_url)
    try:
        channel = await connection.channel(publisher_confirms=True)

        async def redrive() -> float:
            batch = next_batch(store)
            await asyncio.to_thread(run.vacuum, "dead_letters", "task_runs", "redrive_items")
            await asyncio.to_thread(store.run, load_store, batch, count)
            cpu_before = api.cpu()
            day = batch_day(batch)
            request = {
                "since": day.isoformat(),
                "until": (day + timedelta(days=1)).isoformat(),
                "rate": MAX_REDRIVE_RATE,
            }
            async with httpx.AsyncClient(base_url=url, timeout=30.0) as client:
                response = await client.post("/dead-letters/redrive", json=request)
                if response.status_code != 202:
                    raise BenchError(f"POST redrive: {response.status_code} {response.text}")
                location = response.headers["location"]

                async def finished() -> dict[str, Any] | None:
                    api.check()
                    job: dict[str, Any] = (await client.get(location)).json()
                    return job if job["state"] != "running" else None

                job = await eventually(finished, 30 + count / 50, f"redrive of {count}")
            await purge(run, DOCUMENT_QUEUE)
            if job["published"] != count:
                raise BenchError(f"redrive published {job['published']} of {count}: {job}")
            # The API's CPU while the job ran, polling answered and purge included (small).
            api_cpu.append((api.cpu() - cpu_before) / count * 1e6)
            started = datetime.fromisoformat(job["started_at"])
            ended = datetime.fromisoformat(job["finished_at"])
            return count / (ended - started).total_seconds()

        async def publish_all(concurrency: int) -> float:
            batch = next_batch(store)
            messages = await asyncio.to_thread(store.run, load_store, batch, count)

            async def publish(index: int) -> None:
                await channel.default_exchange.publish(messages[index], routing_key=DOCUMENT_QUEUE)

            load = await drive(count, concurrency, publish)
            await purge(run, DOCUMENT_QUEUE)
            return load.rate

        async def one_by_one() -> float:
            return await publish_all(1)

        async def pipelined() -> float:
            return await publish_all(options.concurrency)

        rounds = await alternate(
            options.rounds,
            {"baseline": one_by_one, "docproc": redrive, "pipelined": pipelined},
        )
    except httpx.HTTPError as exc:
        raise BenchError(f"the API failed during the redrive: {exc!r}\n{api.tail()}") from exc
    finally:
        await connection.close()
        store.close()
        run.stop(api)
    for name, figures, target in (
        ("raw confirmed publish, one at a time", rounds["baseline"], None),
        (f"raw confirmed publish, {options.concurrency} in flight", rounds["pipelined"], 0.5),
    ):
        run.report.compare(
            Comparison(
                measure="redrive",
                figure="dead letters re-published",
                unit="/s",
                baseline_name=name,
                docproc=rounds["docproc"],
                baseline=figures,
                target=target,
                details={}
                if target is None
                else {
                    "letters": f"{count} per round, redrive rate {MAX_REDRIVE_RATE:g}/s (the API's "
                    "maximum)",
                    "API CPU µs per letter": median(api_cpu),
                },
            )
        )
