"""The DLQ consumer: drains `docproc.dead_letter` into the store, acking only what is committed.

Messages are stored in batches (one transaction each) for throughput, and acked with one ack
per batch after the commit. When the store fails, the channel is closed so that every unacked
message goes back to the queue, and consuming resumes on its own once the store answers again —
no crash loop, no loss. A lost broker is reconnected to with growing pauses, so a broker
restart is survived the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Sequence

import aio_pika
import aiormq
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage
from loguru import logger
from sqlalchemy import Connection

from service.broker.declarer import connect
from service.deadletters.parsing import RawMessage, read
from service.errors import BrokerUnavailable, DatabaseError
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
        self._pause = 0.5
        self._inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self._lost = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set, then finish the batch in hand and return.

        The connection is re-made here rather than left to aio-pika's robust connection: its
        restore of a channel's consumer failed after a broker restart in our tests (the
        channel's close callback raised), leaving a consumer that waited forever.
        """
        pause = 1.0
        while not stop.is_set():
            try:
                connection = await connect(self.settings)
            except BrokerUnavailable as exc:
                logger.warning("{}; next try in {:.0f} s", exc, pause)
                await _until(asyncio.sleep(pause), stop)
                pause = min(pause * 2, self.retry_max)
                continue
            pause = 1.0
            try:
                while not stop.is_set():
                    if not await self._consume(connection, stop) and not stop.is_set():
                        await self._wait_for_store(stop)
            except BROKER_ERRORS as exc:
                # What was delivered on the lost channel is back in the queue (unacked); a
                # record already committed is found again by its key when redelivered.
                logger.warning("lost the broker ({!r}); reconnecting", exc)
            finally:
                with contextlib.suppress(*BROKER_ERRORS):
                    await connection.close()

    async def _consume(self, connection: AbstractConnection, stop: asyncio.Event) -> bool:
        """Consume until stopped (True) or until the store fails (False); the channel's unacked
        messages go back to the queue when it closes. Broker errors propagate."""
        channel = await connection.channel()
        lost = asyncio.Event()
        channel.close_callbacks.add(lambda *_: lost.set())
        self._lost = lost
        self._inbox = asyncio.Queue()
        try:
            await channel.set_qos(prefetch_count=self.batch_size * 2)
            queue = await channel.get_queue(DEAD_LETTER_QUEUE, ensure=False)
            await queue.consume(self._inbox.put)
            logger.info("consuming {}", DEAD_LETTER_QUEUE)
            while not stop.is_set():
                batch = await self._next_batch(stop)
                if batch and not await self._store(batch):
                    return False
            return True
        finally:
            # Closing the channel hands back what it holds unacked, batched or not.
            self._inbox = asyncio.Queue()
            with contextlib.suppress(*BROKER_ERRORS):
                await channel.close()

    async def _next_batch(self, stop: asyncio.Event) -> list[AbstractIncomingMessage]:
        stopping = asyncio.ensure_future(stop.wait())
        losing = asyncio.ensure_future(self._lost.wait())
        first = asyncio.ensure_future(self._inbox.get())
        try:
            await asyncio.wait({stopping, losing, first}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            losing.cancel()
        if not first.done():
            first.cancel()
            if self._lost.is_set():
                raise ConnectionError("the channel to RabbitMQ closed")
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
            # Closing the channel (the caller does) hands the batch back to the queue.
            logger.warning("the store failed, handing {} dead letters back: {}", len(batch), exc)
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


BROKER_ERRORS = (
    aiormq.exceptions.AMQPError,
    aio_pika.exceptions.AMQPException,
    ConnectionError,
    asyncio.TimeoutError,
)


async def _until(event_wait: Awaitable[object], stop: asyncio.Event) -> None:
    """Wait for `event_wait`, or for `stop`, whichever comes first."""
    waits = [asyncio.ensure_future(event_wait), asyncio.ensure_future(stop.wait())]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiting in waits:
            waiting.cancel()


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
