"""Publishing from async code: Celery protocol-2 task messages and re-published dead letters.

One long-lived robust connection and one channel with publisher confirms: a publish returns only
when RabbitMQ has taken responsibility for the message, or raises BrokerUnavailable. The first
connection is retried in the background, so that a process starts (and says it is not ready)
while the broker is away. aio-pika does not replay a publish that failed; callers decide.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import Mapping
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractExchange,
    AbstractRobustChannel,
    AbstractRobustConnection,
    DeliveryMode,
)
from loguru import logger

from service.errors import BrokerUnavailable
from service.logs import CORRELATION_HEADER
from service.serialization import CONTENT_ENCODING, CONTENT_TYPE, dumps
from service.settings import Settings
from service.topology import EXCHANGE

PUBLISH_TIMEOUT = 5.0
"""Seconds to wait for RabbitMQ's confirm (a blocked broker never sends one)."""
ORIGIN = f"docproc-{os.getpid()}@{socket.gethostname()}"


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


class Publisher:
    def __init__(self, settings: Settings, *, timeout: float = PUBLISH_TIMEOUT) -> None:
        self.settings = settings
        self.timeout = timeout
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._connecting: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return (
            self._connection is not None
            and not self._connection.is_closed
            and self._channel is not None
            and not self._channel.is_closed
        )

    async def start(self) -> None:
        """Connect now if RabbitMQ answers, else keep trying in the background."""
        try:
            await self._connect()
        except (OSError, TimeoutError, aiormq.exceptions.AMQPError) as exc:
            logger.warning("RabbitMQ is not reachable yet ({}); retrying in the background", exc)
            self._connecting = asyncio.create_task(self._connect_forever())

    async def _connect(self) -> None:
        connection = await asyncio.wait_for(
            aio_pika.connect_robust(self.settings.broker_url), self.timeout
        )
        channel = await connection.channel(publisher_confirms=True)
        self._exchange = await channel.get_exchange(EXCHANGE, ensure=False)
        self._connection, self._channel = connection, channel

    async def _connect_forever(self) -> None:
        pause = 0.5
        while True:
            await asyncio.sleep(pause)
            try:
                await self._connect()
            except (OSError, TimeoutError, aiormq.exceptions.AMQPError) as exc:
                pause = min(pause * 2, 30.0)
                logger.debug("RabbitMQ still unreachable: {}", exc)
            else:
                logger.info("connected to RabbitMQ")
                return

    async def publish(
        self, message: aio_pika.Message, routing_key: str, *, exchange: str = EXCHANGE
    ) -> None:
        """Publish and wait for the confirm; BrokerUnavailable if it does not come."""
        if not self.connected or self._channel is None or self._exchange is None:
            raise BrokerUnavailable("RabbitMQ is not connected")
        target = self._exchange
        if exchange == "":
            target = self._channel.default_exchange
        elif exchange != EXCHANGE:
            target = await self._channel.get_exchange(exchange, ensure=False)
        try:
            await target.publish(
                message, routing_key=routing_key, mandatory=True, timeout=self.timeout
            )
        except TimeoutError as exc:
            raise BrokerUnavailable(
                f"RabbitMQ did not confirm within {self.timeout:g} s (is it blocked by a "
                "memory or disk alarm?)"
            ) from exc
        except aio_pika.exceptions.DeliveryError as exc:
            raise BrokerUnavailable(f"RabbitMQ refused the message: {exc}") from exc
        except (aiormq.exceptions.AMQPError, aio_pika.exceptions.AMQPException, OSError) as exc:
            raise BrokerUnavailable(f"publishing failed: {exc!r}") from exc

    async def close(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connecting
        if self._connection is not None:
            await self._connection.close()
