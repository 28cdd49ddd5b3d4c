"""Declares the topology through aio-pika, idempotently; explains a mismatch instead of looping."""

from __future__ import annotations

from collections.abc import Sequence

import aiormq
from aio_pika.abc import AbstractChannel, ExchangeType
from loguru import logger

from service.broker.connection import connect, grant, user_of
from service.broker.drift import queue_differences
from service.broker.management import Management
from service.errors import ConfigError, DocprocError, TopologyMismatch
from service.settings import Settings
from service.topology import Exchange, Queue, Topology, build_topology


async def declare_topology(settings: Settings, topology: Topology | None = None) -> Topology:
    """Declare every exchange, queue and binding of `topology`; declaring again changes nothing.

    Raises BrokerUnavailable when RabbitMQ cannot be reached, TopologyMismatch when an object
    exists with other arguments (PRECONDITION_FAILED), naming it, the differences and the fix,
    and ConfigError when the user may not declare or bind them (ACCESS_REFUSED).
    """
    topology = topology or build_topology(settings)
    connection = await connect(settings, name="declarer")
    try:
        channel = await connection.channel()
        await _declare(channel, topology, settings)
    except aiormq.exceptions.ChannelAccessRefused as exc:
        raise _refused(settings, exc) from None
    finally:
        await connection.close()
    logger.bind(vhost=settings.vhost).debug(
        "topology declared: {} exchanges, {} queues, {} bindings",
        len(topology.exchanges),
        len(topology.queues),
        len(topology.bindings),
    )
    return topology


async def _declare(channel: AbstractChannel, topology: Topology, settings: Settings) -> None:
    for exchange in topology.exchanges:
        try:
            await channel.declare_exchange(exchange.name, ExchangeType(exchange.type), durable=True)
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise await _mismatch(settings, exchange, exc) from None
    for queue in topology.queues:
        try:
            await channel.declare_queue(queue.name, durable=True, arguments=dict(queue.arguments))
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise await _mismatch(settings, queue, exc) from None
    for binding in topology.bindings:
        source = await channel.get_exchange(binding.source, ensure=False)
        if binding.destination_type == "queue":
            queue_ = await channel.get_queue(binding.destination, ensure=False)
            await queue_.bind(source, routing_key=binding.routing_key)
        else:
            exchange_ = await channel.get_exchange(binding.destination, ensure=False)
            await exchange_.bind(source, routing_key=binding.routing_key)


def _refused(settings: Settings, exc: aiormq.exceptions.ChannelAccessRefused) -> ConfigError:
    """The user of DOCPROC_BROKER_URL lacks a permission docproc needs on the vhost."""
    user = user_of(settings.broker_urls[0])
    said = str(exc.args[0]) if exc.args else repr(exc)
    return ConfigError(
        f"RabbitMQ refused what docproc's topology needs ({said}): docproc declares, publishes "
        f"and consumes in vhost {settings.vhost!r}; give user {user!r} every permission on it "
        f"(`{grant(settings.vhost, user)}`), or set DOCPROC_BROKER_URL to a user that has them"
    )


async def _mismatch(
    settings: Settings, item: Exchange | Queue, exc: aiormq.exceptions.ChannelPreconditionFailed
) -> DocprocError:
    vhost = settings.vhost
    differences = [str(exc.args[0]) if exc.args else repr(exc)]
    if isinstance(item, Exchange):
        return TopologyMismatch(
            f"exchange {item.name}",
            differences,
            f"delete the exchange {item.name!r} in vhost {vhost!r} (management UI, or "
            f"`rabbitmqadmin -V {vhost} delete exchange name={item.name}`), "
            "then run `docproc topology declare`",
        )
    try:
        async with Management.from_settings(settings) as management:
            actual = await management.queue(item.name)
        if actual is not None:
            differences = queue_differences(item, actual) or differences
    except DocprocError as unavailable:
        logger.warning("cannot read the queue's arguments: {}", unavailable)
    return TopologyMismatch(
        f"queue {item.name}",
        differences,
        f"RabbitMQ cannot change a queue's arguments in place. Either set DOCPROC_QUEUE_TYPE / "
        f"DOCPROC_DELIVERY_LIMIT to match it, or move its messages away (shovel) and delete it "
        f"(`rabbitmqctl delete_queue -p {vhost} {item.name}`), then run `docproc topology declare`",
    )


async def consumer_counts(settings: Settings, queues: Sequence[str]) -> dict[str, int]:
    """How many consumers each queue has right now (a passive declare answers at once, where the
    management API's figures lag by seconds). A missing queue counts 0."""
    connection = await connect(settings, name="probe")
    counts: dict[str, int] = {}
    try:
        for name in queues:
            channel = await connection.channel()
            try:
                queue = await channel.declare_queue(name, passive=True)
                counts[name] = queue.declaration_result.consumer_count or 0
            except aiormq.exceptions.ChannelNotFoundEntity:
                counts[name] = 0
            finally:
                if not channel.is_closed:
                    await channel.close()
    finally:
        await connection.close()
    return counts
