"""Publishing from async code: Celery protocol-2 task messages and re-published dead letters.

One long-lived connection and a channel with publisher confirms (made anew when RabbitMQ nacks on
it: `Publisher._replace`): a publish returns only when RabbitMQ has taken responsibility for the
message, or raises — BrokerUnavailable when it is not connected or does not confirm, NotSent when
it certainly did not go out (not connected, or nacked), Unroutable when it returns the message,
Unwritable when it cannot be written as AMQP (nothing went out either).
The connection is kept up in the background (a process starts, and says it is not ready, while
the broker is away), and a callback hears each (re)connection: what could not be published
meanwhile goes out then. Nothing is replayed here; callers decide.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import time
import uuid
import weakref
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    DeliveryMode,
)
from loguru import logger

from service.broker.connection import BROKER_ERRORS, connect, connect_until, until
from service.errors import BrokerUnavailable, Conflict, NotSent, Unconfirmed, Unroutable
from service.logs import CORRELATION_HEADER
from service.serialization import CONTENT_ENCODING, CONTENT_TYPE, dumps
from service.settings import Settings
from service.topology import EXCHANGE

PUBLISH_TIMEOUT = 5.0
"""Seconds to wait for RabbitMQ's confirm (a blocked broker never sends one)."""
RECONNECT_PAUSE_MAX = 1.0
"""The longest pause between two attempts to reach the broker again: documents that could not be
queued meanwhile go out within a second or two of its return."""
ORIGIN = f"docproc-{os.getpid()}@{socket.gethostname()}"
NAME_BYTES = 255
"""Bytes of UTF-8 a queue name or a routing key holds at most (an AMQP short string); aiormq
counts its characters, and 200 "é" (400 bytes) failed only as pamqp wrote the frame."""


class Unwritable(Conflict):
    """The message, or where it goes, cannot be written as AMQP: a routing key past NAME_BYTES,
    a header AMQP has no type for, a table nested past Python's stack. Raised as the frame is
    built — aiormq writes a frame only once it is whole — so it certainly did not go out."""


FRAME_ERRORS = (TypeError, ValueError, OverflowError, RecursionError, struct.error)
"""What pamqp raises for a value it cannot write."""


def _retrieved(done: asyncio.Future[None]) -> None:
    if not done.cancelled():
        done.exception()


def task_message(
    task: str,
    task_id: str,
    *,
    args: tuple[Any, ...] = (),
    kwargs: Mapping[str, Any] | None = None,
    correlation_id: str | None = None,
    root_id: str | None = None,
    parent_id: str | None = None,
    retries: int = 0,
) -> aio_pika.Message:
    """A message a Celery worker cannot tell from one `apply_async` sent (protocol 2)."""
    kwargs = dict(kwargs or {})
    headers: dict[str, Any] = {
        "lang": "py",
        "task": task,
        "id": task_id,
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": retries,
        "timelimit": [None, None],
        "root_id": root_id or task_id,
        "parent_id": parent_id,
        "argsrepr": repr(args),
        "kwargsrepr": repr(kwargs),
        "origin": ORIGIN,
        "ignore_result": None,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
    }
    if correlation_id is not None:
        headers[CORRELATION_HEADER] = correlation_id
    body = dumps(
        [list(args), kwargs, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    )
    return aio_pika.Message(
        body,
        headers=headers,
        content_type=CONTENT_TYPE,
        content_encoding=CONTENT_ENCODING,
        delivery_mode=DeliveryMode.PERSISTENT,
        priority=0,
        correlation_id=task_id,
        message_id=str(uuid.uuid4()),
    )


@runtime_checkable  # Litestar checks the dependencies it hands to handlers with isinstance
class TaskPublisher(Protocol):
    """What publishes for the API (intake, re-publish, redrive): RabbitMQ's `Publisher`, or a
    recording fake in tests that are about HTTP."""

    on_connect: Callable[[], None] | None

    @property
    def connected(self) -> bool: ...

    async def start(self) -> None: ...

    async def publish(
        self, message: aio_pika.Message, routing_key: str, *, exchange: str = EXCHANGE
    ) -> None: ...

    async def publish_settling(self, message: aio_pika.Message, routing_key: str) -> None: ...

    async def close(self) -> None: ...


ROUND_TRIP_ERRORS: tuple[type[BaseException], ...] = (*BROKER_ERRORS, RuntimeError)
"""What a round trip on a lost connection raises (aiormq: a RuntimeError once it is closed)."""
_round_trips: weakref.WeakKeyDictionary[AbstractConnection, asyncio.Task[None]] = (
    weakref.WeakKeyDictionary()
)
"""The round trip in flight on each connection: probes that come meanwhile wait for it."""


async def _open_and_close_channel(connection: AbstractConnection, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        channel = await connection.channel(publisher_confirms=False)
        await channel.close()


async def round_trip(connection: AbstractConnection, timeout: float) -> None:
    """A channel opened and closed on `connection`: two answers RabbitMQ gives at once, and that
    a broker gone silent — a link that stops forwarding without closing — does not give (the
    connection looks up until the heartbeat times out, minutes later). TimeoutError after
    `timeout`. One at a time per connection: concurrent probes share it."""
    flying = _round_trips.get(connection)
    if flying is None:
        flying = asyncio.create_task(
            _open_and_close_channel(connection, timeout), name="round-trip"
        )
        _round_trips[connection] = flying
        flying.add_done_callback(lambda _: _round_trips.pop(connection, None))
        flying.add_done_callback(_retrieved)  # the probes that waited for it may all have gone
    await asyncio.shield(flying)  # a probe that gives up leaves it to the others


class Publisher:
    """One connection kept up by the connection module's reconnect loop, and a channel with
    publisher confirms on which a returned (unroutable) message raises."""

    def __init__(
        self,
        settings: Settings,
        *,
        timeout: float = PUBLISH_TIMEOUT,
        name: str = "api",
        on_connect: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.timeout = timeout
        self.name = name
        self.on_connect = on_connect
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._keeping: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._lost = asyncio.Event()
        """Set when the connection, or the channel in use, closes (`_keep_connected`)."""
        self._replacing = asyncio.Lock()
        self._channel_since = 0.0
        """When the channel in use was opened (monotonic)."""
        self._retiring: set[asyncio.Task[None]] = set()

    @property
    def connected(self) -> bool:
        return (
            self._connection is not None
            and not self._connection.is_closed
            and self._channel is not None
            and not self._channel.is_closed
        )

    async def round_trip(self, timeout: float) -> None:
        """A round trip to RabbitMQ on the connection publishes go through (`round_trip`):
        TimeoutError when none comes back within `timeout`, BrokerUnavailable when there is no
        connection."""
        connection = self._connection
        if connection is None or connection.is_closed:
            raise BrokerUnavailable("not connected")
        await round_trip(connection, timeout)

    async def start(self) -> None:
        """Connect now if a node answers, and keep the connection up in the background."""
        try:
            await self._open(await connect(self.settings, name=self.name))
        except BrokerUnavailable as exc:
            logger.warning("{}; retrying in the background", exc)
        except BROKER_ERRORS as exc:
            logger.warning("RabbitMQ is not usable yet ({!r}); retrying in the background", exc)
        self._keeping = asyncio.create_task(self._keep_connected(), name="publisher-connection")

    async def _open(self, connection: AbstractConnection) -> None:
        try:
            channel, exchange = await self._new_channel(connection)
        except BaseException:
            with contextlib.suppress(*BROKER_ERRORS):
                await connection.close()
            raise
        lost = self._lost = asyncio.Event()
        connection.close_callbacks.add(lambda *_: lost.set())
        self._connection, self._channel, self._exchange = connection, channel, exchange
        self._channel_since = time.monotonic()
        if self.on_connect is not None:
            self.on_connect()

    async def _new_channel(
        self, connection: AbstractConnection
    ) -> tuple[AbstractChannel, AbstractExchange]:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        # Only the channel in use, closing, is a loss: one retired (`_replace`) is not.
        channel.close_callbacks.add(
            lambda *_: self._lost.set() if channel is self._channel else None
        )
        return channel, await channel.get_exchange(EXCHANGE, ensure=False)

    async def _replace(self, refused: AbstractChannel) -> None:
        """A channel RabbitMQ nacked on is replaced by a new one on the same connection, and
        closed once the confirms in flight on it have come or timed out. A quorum queue of
        RabbitMQ 3.10 at its max-length refuses a channel, and goes on refusing it after the
        limit is lifted (rabbitmq-server#12206): a new channel publishes. At most one a publish
        timeout: uploads nacked one after another by a full queue do not pile channels up."""
        async with self._replacing:
            connection = self._connection
            if (
                self._stop.is_set()
                or refused is not self._channel
                or connection is None
                or connection.is_closed
                or time.monotonic() - self._channel_since < self.timeout
            ):
                return  # replaced already or lately, or the connection is going
            try:
                # A blocked broker answers no Channel.Open: the nacked publish must not wait.
                async with asyncio.timeout(self.timeout):
                    channel, exchange = await self._new_channel(connection)
            except BROKER_ERRORS as exc:
                logger.warning("could not open a channel in place of a refused one: {!r}", exc)
                return
            if self._connection is not connection or self._channel is not refused:
                # The connection was made again meanwhile: its own channel stays.
                with contextlib.suppress(*BROKER_ERRORS):
                    await channel.close()
                return
            self._channel, self._exchange = channel, exchange
            self._channel_since = time.monotonic()
        retiring = asyncio.create_task(self._retire(refused), name="publisher-retire-channel")
        self._retiring.add(retiring)
        retiring.add_done_callback(self._retiring.discard)

    async def _retire(self, channel: AbstractChannel) -> None:
        await until(asyncio.sleep(self.timeout), self._stop)
        with contextlib.suppress(*BROKER_ERRORS):
            await channel.close()

    async def _keep_connected(self) -> None:
        """The reconnect loop (service.broker.connection), for as long as the publisher lives."""
        while not self._stop.is_set():
            if self.connected:
                await self._until_lost()
                if self._stop.is_set():
                    return
                logger.warning("lost the connection to RabbitMQ; reconnecting")
                with contextlib.suppress(*BROKER_ERRORS):
                    if self._connection is not None:
                        await self._connection.close()
            connection = await connect_until(
                self.settings, self._stop, name=self.name, pause_max=RECONNECT_PAUSE_MAX
            )
            if connection is None:
                return
            try:
                await self._open(connection)
            except BROKER_ERRORS as exc:
                logger.warning("RabbitMQ answered but the channel failed ({!r}); retrying", exc)
                await until(asyncio.sleep(RECONNECT_PAUSE_MAX), self._stop)

    async def _until_lost(self) -> None:
        if self.connected:  # it may have closed before the callbacks were in place
            await until(self._lost.wait(), self._stop)

    async def publish(
        self, message: aio_pika.Message, routing_key: str, *, exchange: str = EXCHANGE
    ) -> None:
        """Publish and wait for the confirm. BrokerUnavailable if it does not come; Unroutable
        when RabbitMQ returns the message (no queue bound where it was sent); Unwritable when it
        cannot be written as AMQP."""
        size = len(routing_key.encode("utf-8", "surrogatepass"))
        if size > NAME_BYTES:
            raise Unwritable(
                f"the routing key is {size} bytes in UTF-8, more than the {NAME_BYTES} AMQP allows"
            )
        channel, target = await self._target(exchange)
        try:
            await target.publish(
                message, routing_key=routing_key, mandatory=True, timeout=self.timeout
            )
        except TimeoutError as exc:
            raise BrokerUnavailable(self._unconfirmed) from exc
        except BROKER_ERRORS as exc:
            raise await self._refusal(exc, channel, exchange, routing_key) from exc
        except FRAME_ERRORS as exc:
            said = "nested too deep" if isinstance(exc, RecursionError) else str(exc)[:200]
            raise Unwritable(
                f"the message cannot be written as AMQP ({type(exc).__name__}: {said})"
            ) from exc

    async def publish_settling(self, message: aio_pika.Message, routing_key: str) -> None:
        """`publish` to docproc's exchange; but a confirm that does not come in time is left to
        come: Unconfirmed, whose `outcome` says how the publish ended. A blocked broker (a memory
        or disk alarm) reads nothing while the connection stays up; what was written goes in
        when it reads again — a publish given up and made again would go in twice."""
        channel, target = await self._target(EXCHANGE)

        async def confirmed() -> None:
            try:
                await target.publish(message, routing_key=routing_key, mandatory=True)
            except BROKER_ERRORS as exc:
                raise await self._refusal(exc, channel, EXCHANGE, routing_key) from exc

        publishing = asyncio.ensure_future(confirmed())
        publishing.add_done_callback(_retrieved)  # whoever waited may have stopped waiting
        try:
            await asyncio.wait_for(asyncio.shield(publishing), self.timeout)
        except TimeoutError as exc:
            raise Unconfirmed(self._unconfirmed, publishing) from exc

    @property
    def _unconfirmed(self) -> str:
        return (
            f"RabbitMQ did not confirm within {self.timeout:g} s (is it blocked by a memory or "
            "disk alarm?)"
        )

    async def _target(self, exchange: str) -> tuple[AbstractChannel, AbstractExchange]:
        channel = self._channel
        if not self.connected or channel is None or self._exchange is None:
            raise NotSent("RabbitMQ is not connected")
        if exchange == "":
            return channel, channel.default_exchange
        if exchange != EXCHANGE:
            return channel, await channel.get_exchange(exchange, ensure=False)
        return channel, self._exchange

    async def _refusal(
        self, exc: BaseException, channel: AbstractChannel, exchange: str, routing_key: str
    ) -> BrokerUnavailable | Unroutable:
        """What a failed publish raises for the broker's error (returned, nacked, lost)."""
        if isinstance(exc, aiormq.exceptions.PublishError):
            where = f"exchange {exchange or '(default)'!r}, routing key {routing_key!r}"
            return Unroutable(f"RabbitMQ returned the message: no queue is bound at {where}")
        if isinstance(exc, aio_pika.exceptions.DeliveryError):
            await self._replace(channel)
            # A nack: a queue it routes to is full (max-length, overflow reject-publish), or
            # the queue could not take it. Said so that an operator knows where to look.
            return NotSent(
                "RabbitMQ refused the message (nack): is a queue it goes to at its max-length?"
            )
        return BrokerUnavailable(f"publishing failed: {exc!r}")

    async def close(self) -> None:
        self._stop.set()
        # Their channels close with the connection; a close of their own could wait a heartbeat.
        for retiring in list(self._retiring):
            retiring.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await retiring
        if self._keeping is not None:
            self._keeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeping
        if self._connection is not None:
            with contextlib.suppress(*BROKER_ERRORS):
                await self._connection.close()
