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
from shlex import quote
from urllib.parse import unquote, urlsplit

import aio_pika
import aiormq
from aio_pika.abc import AbstractConnection
from loguru import logger

from service.errors import BrokerUnavailable, ConfigError
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


class BrokerRefused(ConfigError, BrokerUnavailable):
    """RabbitMQ answered and refused the connection DOCPROC_BROKER_URL asks for: the user's
    password, or a vhost that does not exist or is not the user's. A setting to fix, as a
    command's end says (exit 78); to a process that keeps reconnecting, as unusable as a broker
    that does not answer, until someone fixes it."""


def _where(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or (5671 if parts.scheme == 'amqps' else 5672)}"


def user_of(url: str) -> str:
    """The RabbitMQ user a broker URL connects as (guest when it names none, as aiormq does)."""
    return unquote(urlsplit(url).username or "guest")


def grant(vhost: str, user: str) -> str:
    """The command that lets `user` do in `vhost` what docproc does: declare (configure),
    publish (write) and consume (read)."""
    return f"rabbitmqctl set_permissions -p {quote(vhost)} {quote(user)} '.*' '.*' '.*'"


def _refusal(url: str, vhost: str, exc: BaseException) -> str | None:
    """What RabbitMQ refused, and the fix, when `exc` is its refusal of the connection; None
    when it is not (no answer, a connection lost)."""
    user = user_of(url)
    if isinstance(exc, aiormq.exceptions.ProbableAuthenticationError):
        guest = "; guest may log in from localhost only" if user == "guest" else ""
        return (
            f"RabbitMQ at {_where(url)} refused user {user!r} ({redact(str(exc))}): check the "
            f"user and password in DOCPROC_BROKER_URL (`rabbitmqctl authenticate_user "
            f"{quote(user)} <password>` tries them{guest})"
        )
    # RabbitMQ closes the connection (530 NOT_ALLOWED) instead of opening the vhost; aiormq 7
    # says so as an InvalidFrameError naming the two frames, without RabbitMQ's reason.
    said = str(exc) if isinstance(exc, aiormq.exceptions.InvalidFrameError) else ""
    closed = "Connection.OpenOk" in said and "Connection.Close" in said
    if closed or isinstance(exc, aiormq.exceptions.ConnectionNotAllowed):
        return (
            f"RabbitMQ at {_where(url)} refused to open vhost {vhost!r} to user {user!r}: either "
            f"it does not exist (`rabbitmqctl add_vhost {quote(vhost)}`, or check the vhost in "
            f"DOCPROC_BROKER_URL, its path) or the user has no permissions on it "
            f"(`{grant(vhost, user)}`)"
        )
    return None


async def connect(
    settings: Settings, *, name: str | None = None, timeout: float = CONNECT_TIMEOUT
) -> AbstractConnection:
    """A connection to the first node that answers, each tried once; BrokerUnavailable, naming
    every node and why, when none does, BrokerRefused when one answered but refused the user or
    the vhost. `name` shows in RabbitMQ's UI."""
    urls = settings.broker_urls
    start = _answered_last.get(urls, 0)
    tried: list[str] = []
    refusal: str | None = None
    label = f"docproc {name or 'client'} {os.getpid()}@{socket.gethostname()}"
    for index in [*range(start, len(urls)), *range(start)]:
        try:
            connection = await asyncio.wait_for(
                aio_pika.connect(urls[index], client_properties={"connection_name": label}),
                timeout,
            )
        except BROKER_ERRORS as exc:
            refusal = refusal or _refusal(urls[index], settings.vhost, exc)
            tried.append(f"{_where(urls[index])} ({redact(str(exc)) or type(exc).__name__})")
            continue
        _answered_last[urls] = index
        return connection
    if refusal is not None:  # one node answered: starting a broker is not the fix
        raise BrokerRefused(refusal)
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
