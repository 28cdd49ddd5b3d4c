"""The broker topology, defined once.

Celery's `task_queues`, the aio-pika declarer, `docproc topology check` and `docproc topology
export` (and so `infra/rabbitmq/definitions.json`) are all derived from `build_topology`. It depends
on settings alone.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from service.settings import Settings

EXCHANGE = "docproc"
DEAD_LETTER_EXCHANGE = "docproc.dlx"
DOCUMENT_QUEUE = "document_processing"
RETRY_QUEUE = "retry_queue"
MAINTENANCE_QUEUE = "celery"
DEAD_LETTER_QUEUE = "docproc.dead_letter"
WORK_QUEUES = (DOCUMENT_QUEUE, RETRY_QUEUE, MAINTENANCE_QUEUE)

ArgumentValue = str | int
Owner = Literal["docproc", "celery"]


class Exchange(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    type: Literal["topic", "direct", "fanout", "headers"] = "topic"
    owner: Owner = "docproc"


class Queue(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    arguments: dict[str, ArgumentValue]
    owner: Owner = "docproc"


class Binding(msgspec.Struct, frozen=True, kw_only=True):
    source: str
    destination: str
    routing_key: str
    destination_type: Literal["queue", "exchange"] = "queue"
    owner: Owner = "docproc"


class Topology(msgspec.Struct, frozen=True, kw_only=True):
    """Exchanges first, then queues, then bindings: the order they must be declared in."""

    exchanges: tuple[Exchange, ...]
    queues: tuple[Queue, ...]
    bindings: tuple[Binding, ...]

    def queue(self, name: str) -> Queue:
        for queue in self.queues:
            if queue.name == name:
                return queue
        raise KeyError(name)

    @property
    def native_delayed_delivery(self) -> bool:
        """Whether Celery holds countdowns in the broker (it only does so with quorum queues)."""
        return any(exchange.owner == "celery" for exchange in self.exchanges)


def build_topology(settings: Settings) -> Topology:
    quorum = settings.queue_type == "quorum"
    work_arguments: dict[str, ArgumentValue] = {"x-queue-type": settings.queue_type}
    if quorum:
        work_arguments |= {
            "x-delivery-limit": settings.delivery_limit,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }
    exchanges = [Exchange(name=EXCHANGE), Exchange(name=DEAD_LETTER_EXCHANGE)]
    queues = [
        Queue(
            name=name,
            arguments=work_arguments
            | {
                "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
                # Delayed messages arrive with a bit-prefixed routing key; name the source instead.
                "x-dead-letter-routing-key": name,
            },
        )
        for name in WORK_QUEUES
    ]
    queues.append(Queue(name=DEAD_LETTER_QUEUE, arguments={"x-queue-type": settings.queue_type}))
    bindings = [
        Binding(source=EXCHANGE, destination=name, routing_key=name) for name in WORK_QUEUES
    ]
    bindings.append(
        Binding(source=DEAD_LETTER_EXCHANGE, destination=DEAD_LETTER_QUEUE, routing_key="#")
    )
    topology = Topology(exchanges=tuple(exchanges), queues=tuple(queues), bindings=tuple(bindings))
    return _with_native_delayed_delivery(topology, settings.queue_type) if quorum else topology


# What Celery's native delayed delivery (kombu.transport.native_delayed_delivery, kombu 5.7)
# declares: copied here so that the topology depends on settings alone; tests/unit/test_topology
# declares the same through kombu and compares, so a kombu release that changes it is caught.
DELAY_LEVELS = 28
"""Bits of a delay in seconds: one TTL queue each, 2**level seconds."""
DELAYED_DELIVERY_EXCHANGE = "celery_delayed_delivery"


def delay_level_name(level: int) -> str:
    return f"celery_delayed_{level}"


def _with_native_delayed_delivery(topology: Topology, queue_type: str) -> Topology:
    """Add what Celery's DelayedDelivery bootstep declares, so that check and export see it too.

    Mirrors kombu.transport.native_delayed_delivery: a binary cascade of TTL queues, one per bit
    of the delay in seconds, ending in an exchange that routes back to the work queues. A test
    declares the same through kombu and compares, so a kombu upgrade that changes it is caught.
    """
    levels = range((DELAY_LEVELS - 1), -1, -1)
    delivery = DELAYED_DELIVERY_EXCHANGE
    exchanges = [Exchange(name=delay_level_name(level), owner="celery") for level in levels]
    exchanges.append(Exchange(name=delivery, owner="celery"))
    queues: list[Queue] = []
    bindings: list[Binding] = []
    for level in levels:
        name = delay_level_name(level)
        arguments: dict[str, ArgumentValue] = {
            "x-queue-type": queue_type,
            "x-overflow": "reject-publish",
            "x-message-ttl": 2**level * 1000,
            "x-dead-letter-exchange": delay_level_name(level - 1) if level else delivery,
        }
        if queue_type == "quorum":
            arguments["x-dead-letter-strategy"] = "at-least-once"
        queues.append(Queue(name=name, arguments=arguments, owner="celery"))
        stars = "*." * ((DELAY_LEVELS - 1) - level)
        bindings.append(
            Binding(source=name, destination=name, routing_key=stars + "1.#", owner="celery")
        )
        bindings.append(
            Binding(
                source=name,
                destination=delay_level_name(level - 1) if level else delivery,
                destination_type="exchange",
                routing_key=stars + "0.#",
                owner="celery",
            )
        )
    for name in WORK_QUEUES:
        bindings.append(
            Binding(
                source=delivery,
                destination=EXCHANGE,
                destination_type="exchange",
                routing_key=f"#.{name}",
                owner="celery",
            )
        )
        bindings.append(
            Binding(source=EXCHANGE, destination=name, routing_key=f"#.{name}", owner="celery")
        )
    return Topology(
        exchanges=topology.exchanges + tuple(exchanges),
        queues=topology.queues + tuple(queues),
        bindings=topology.bindings + tuple(bindings),
    )


def export_definitions(topology: Topology, vhost: str = "/") -> dict[str, Any]:
    """RabbitMQ definitions JSON, as the management plugin's `load_definitions` reads it."""
    return {
        "vhosts": [{"name": vhost}],
        "exchanges": [
            {
                "name": exchange.name,
                "vhost": vhost,
                "type": exchange.type,
                "durable": True,
                "auto_delete": False,
                "internal": False,
                "arguments": {},
            }
            for exchange in topology.exchanges
        ],
        "queues": [
            {
                "name": queue.name,
                "vhost": vhost,
                "durable": True,
                "auto_delete": False,
                "arguments": dict(sorted(queue.arguments.items())),
            }
            for queue in topology.queues
        ],
        "bindings": [
            {
                "source": binding.source,
                "vhost": vhost,
                "destination": binding.destination,
                "destination_type": binding.destination_type,
                "routing_key": binding.routing_key,
                "arguments": {},
            }
            for binding in topology.bindings
        ],
    }
