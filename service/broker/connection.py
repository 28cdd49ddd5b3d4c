"""Connections to RabbitMQ, for the async side (API publisher, DLQ consumer, CLI): one place that
knows the nodes, walks them, reconnects, and says what "the broker is unavailable" means.

DOCPROC_BROKER_URL names one node or several (`amqp://a//;amqp://b//`, kombu's notation, which
Celery takes as is). aio-pika connects to one host: `connect` tries the nodes in turn, starting
after the one that answered last, and `connect_until` keeps doing so with growing pauses. aio-pika's
robust connection is not used: it fails fast at start-up, and it knows a single host.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable

import aio_pika
import aiormq
from aio_pika.abc import AbstractConnection
from loguru import logger

from service.errors import BrokerUnavailable
from service.redaction import redact
from service.settings import Settings

CONNECT_TIMEOUT = 10.0
"""Seconds one node may take to accept a connection."""

BROKER_ERRORS: tuple[type[BaseException], ...] = (
    aiormq.exceptions.AMQPError,
    aio_pika.exceptions.AMQPException,
    # A call on a channel whose connection closed meanwhile (a RuntimeError in aiormq).
    aiormq.exceptions.ChannelInvalidStateError,
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
)
"""What a lost or unreachable broker raises; anything else is a bug."""

_answered_last: dict[tuple[str, ...], int] = {}
"""Per node list, the node that answered last: the first one tried next time."""


def _where(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or (5671 if parts.scheme == 'amqps' else 5672)}"


async def connect(
    settings: Settings, *, name: str | None = None, timeout: float = CONNECT_TIMEOUT
) -> AbstractConnection:
    """A connection to the first node that answers, each tried once; BrokerUnavailable, naming
    every node and why, when none does. `name` shows in RabbitMQ's UI."""
    urls = settings.broker_urls
    start = _answered_last.get(urls, 0)
    tried: list[str] = []
    label = f"docproc {name or 'client'} {os.getpid()}@{socket.gethostname()}"
    for index in [*range(start, len(urls)), *range(start)]:
        try:
            connection = await asyncio.wait_for(
                aio_pika.connect(urls[index], client_properties={"connection_name": label}),
                timeout,
            )
        except BROKER_ERRORS as exc:
            tried.append(f"{_where(urls[index])} ({redact(str(exc)) or type(exc).__name__})")
            continue
        _answered_last[urls] = index
        return connection
    nodes = "; ".join(tried)
    raise BrokerUnavailable(
        f"RabbitMQ is not reachable at {nodes}, vhost {settings.vhost!r}. Start one with "
        "infra/rabbitmq/local.sh (or `docker compose -f infra/docker-compose.yml up -d rabbitmq`), "
        "or point DOCPROC_BROKER_URL at yours"
    )


async def connect_until(
    settings: Settings,
    stop: asyncio.Event,
    *,
    name: str | None = None,
    pause: float = 0.5,
    pause_max: float = 5.0,
) -> AbstractConnection | None:
    """The reconnect loop: `connect`, again and again with pauses growing to `pause_max`, until a
    node answers (the connection) or `stop` is set (None)."""
    said = False
    while not stop.is_set():
        try:
            connection = await connect(settings, name=name)
        except BrokerUnavailable as exc:
            if not said:
                logger.warning("{}; retrying every {:g} s at most", exc, pause_max)
                said = True
            else:
                logger.debug("still unreachable: {}", exc)
            await until(asyncio.sleep(pause), stop)
            pause = min(pause * 2, pause_max)
            continue
        if said:
            logger.info("connected to RabbitMQ again")
        return connection
    return None


async def until(waiting: Awaitable[object], stop: asyncio.Event) -> None:
    """Wait for `waiting`, or for `stop`, whichever comes first."""
    waits = [asyncio.ensure_future(waiting), asyncio.ensure_future(stop.wait())]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pending in waits:
            pending.cancel()
