"""The DLQ consumer: drains `docproc.dead_letter` into the store, acking only what is committed.

Messages are stored in small batches (one transaction each) for throughput, and acked one by one
after the commit. When the store fails, the channel is closed so that every unacked message goes
back to the queue, and consuming resumes on its own once the store answers again — no crash loop,
no loss. The connection is robust: a broker restart is survived the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Sequence

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from loguru import logger
from sqlalchemy import Connection

from service.deadletters.parsing import RawMessage, read
from service.errors import DatabaseError
from service.logs import correlated
from service.settings import Settings
from service.store import dead_letters
from service.store.database import AsyncStore
from service.topology import DEAD_LETTER_QUEUE

PROPERTIES = (
    "content_type",
    "content_encoding",
    "delivery_mode",
    "priority",
    "correlation_id",
    "reply_to",
    "expiration",
    "message_id",
    "timestamp",
    "type",
    "user_id",
    "app_id",
)


def raw_message(message: AbstractIncomingMessage) -> RawMessage:
    properties = {}
    for name in PROPERTIES:
        value = getattr(message, name, None)
        if value is not None:
            properties[name] = int(value) if name == "delivery_mode" else value
    return RawMessage(
        body=message.body,
        headers=dict(message.headers or {}),
        properties=properties,
        routing_key=message.routing_key,
        redelivered=bool(message.redelivered),
    )


def store_batch(connection: Connection, raws: Sequence[RawMessage]) -> list[tuple[str, bool]]:
    """Store each message of a batch, in one transaction."""
    return dead_letters.store_many(connection, [(read(raw), raw.redelivered) for raw in raws])


class DeadLetterConsumer:
    def __init__(
        self,
        settings: Settings,
        store: AsyncStore,
        *,
        batch_size: int = 250,
        batch_wait: float = 0.02,
        retry_max: float = 30.0,
    ) -> None:
        self.settings = settings
        self.store = store
        self.batch_size = batch_size
        self.batch_wait = batch_wait
        self.retry_max = retry_max
        self.stored = 0
        self.connected = asyncio.Event()
        self._pause = 0.5
        self._inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set, then finish the batch in hand and return."""
        connection = await aio_pika.connect_robust(self.settings.broker_url)
        try:
            while not stop.is_set():
                await self._consume(connection, stop)
                if not stop.is_set():
                    await self._wait_for_store(stop)
        finally:
            await connection.close()

    async def _consume(self, connection: AbstractRobustConnection, stop: asyncio.Event) -> None:
        """Consume until stopped or until the store fails; the channel's unacked messages are
        returned to the queue when it closes."""
        channel = await connection.channel()
        try:
            await channel.set_qos(prefetch_count=self.batch_size * 2)
            queue = await channel.get_queue(DEAD_LETTER_QUEUE, ensure=False)
            self._inbox = asyncio.Queue()
            tag = await queue.consume(self._inbox.put)
            self.connected.set()
            logger.info("consuming {}", DEAD_LETTER_QUEUE)
            try:
                while not stop.is_set():
                    batch = await self._next_batch(stop)
                    if batch and not await self._store(batch):
                        return
            finally:
                self.connected.clear()
                if not channel.is_closed:
                    await queue.cancel(tag)
                # Messages delivered but not yet taken into a batch go back to the queue.
                while not self._inbox.empty():
                    await self._inbox.get_nowait().nack(requeue=True)
        finally:
            if not channel.is_closed:
                await channel.close()

    async def _next_batch(self, stop: asyncio.Event) -> list[AbstractIncomingMessage]:
        stopping = asyncio.ensure_future(stop.wait())
        first = asyncio.ensure_future(self._inbox.get())
        try:
            await asyncio.wait({stopping, first}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if not first.done():
            first.cancel()
            return []
        batch = [first.result()]
        deadline = time.monotonic() + self.batch_wait
        while len(batch) < self.batch_size:
            if self._inbox.empty():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._inbox.get(), left))
                except TimeoutError:
                    break
            else:
                batch.append(self._inbox.get_nowait())
        return batch

    async def _store(self, batch: list[AbstractIncomingMessage]) -> bool:
        """Commit the batch, then ack it; on a store failure, hand it back and say so."""
        raws = [raw_message(message) for message in batch]
        try:
            results = await self.store.write(store_batch, raws)
        except DatabaseError as exc:
            logger.warning("the store failed, handing {} dead letters back: {}", len(batch), exc)
            for message in batch:
                await message.nack(requeue=True)
            return False
        # The batch is the oldest unacked deliveries of this channel, in order: one ack covers it.
        await batch[-1].ack(multiple=True)
        for raw, (record_id, created) in zip(raws, results, strict=True):
            with correlated(_correlation(raw)):
                logger.bind(dead_letter_id=record_id, created=created).debug("dead letter stored")
        logger.info("stored {} dead letters", len(batch))
        self.stored += len(batch)
        self._pause = 0.5
        return True

    async def _wait_for_store(self, stop: asyncio.Event) -> None:
        """Probe the store for writing, with growing pauses, until it takes writes again."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._pause)
            self._pause = min(self._pause * 2, self.retry_max)
            try:
                await self.store.write(dead_letters.probe_writable)
            except DatabaseError as exc:
                logger.warning(
                    "the store is still unavailable, next try in {:.1f} s: {}", self._pause, exc
                )
            else:
                logger.info("the store takes writes again; resuming")
                return


def _correlation(raw: RawMessage) -> str | None:
    value = raw.headers.get("x-correlation-id") or raw.properties.get("correlation_id")
    return str(value) if value is not None else None


async def serve(settings: Settings) -> None:
    """The `docproc serve dlq` process: consume until SIGTERM or SIGINT, then drain and exit."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    store = AsyncStore(settings.resolved_database_url)
    try:
        consumer = DeadLetterConsumer(settings, store)
        await consumer.run(stop)
        logger.info("stopped after storing {} dead letters", consumer.stored)
    finally:
        await store.close()
