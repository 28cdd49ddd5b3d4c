"""Task events (Flower's) that never stop the worker while RabbitMQ blocks publishers.

During a memory or disk alarm RabbitMQ stops reading every connection that publishes, and says so
(`connection.blocked`). The worker's events connection publishes three events a task: its socket
buffers filled after some 800 to 1,200 tasks, and py-amqp's TCP_USER_TIMEOUT (1 s; docproc's
connections take 30 s now, which an alarm outlasts: BROKER_TCP_USER_TIMEOUT) then made the kernel
drop the connection. Celery reads that connection in its loop (for heartbeats), took the
drop for the loss of its own connection, and restarted the consumer, whose start waited on a
confirmed broadcast (Mingle's hello) until the alarm cleared: the worker stopped working through
its backlog — when only the workers can bring one down.

Here the events connection is gated: from `connection.blocked` until `connection.unblocked` an
event is dropped (and counted, and logged when the gate opens) instead of written — task events
and the worker's own (its heartbeats: Flower shows it offline meanwhile). An event is a monitoring
record, sent best-effort; the work goes on. Celery reads this connection only with heartbeats on
(`broker_heartbeat`, 120 s by default); without them no `connection.blocked` would be read. The
restart's wait is gone too (service.worker.control), and the worker drops this connection rather
than close it while it is blocked (service.worker.consumer).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

from celery.app.events import Events as CeleryEvents
from celery.events.dispatcher import EventDispatcher
from loguru import logger


class Gate:
    """Whether RabbitMQ blocks one connection, and how many events were dropped meanwhile."""

    def __init__(self) -> None:
        self.blocked: str | None = None
        self.dropped = 0

    def on_blocked(self, reason: str) -> None:
        self.blocked = reason or "no reason given"
        logger.warning(
            "RabbitMQ blocks the task events' connection ({}): events are dropped until it "
            "unblocks; the work goes on",
            self.blocked,
        )

    def on_unblocked(self) -> None:
        logger.info(
            "RabbitMQ unblocked the task events' connection; {} events dropped", self.dropped
        )
        self.blocked = None
        self.dropped = 0

    def callbacks(self) -> dict[str, Any]:
        """py-amqp's connection options that tell this gate (through kombu's transport options:
        each connection kombu makes again gets them too)."""
        return {"on_blocked": self.on_blocked, "on_unblocked": self.on_unblocked}


_gates: weakref.WeakKeyDictionary[Any, Gate] = weakref.WeakKeyDictionary()


def gated(make: Callable[[dict[str, Any]], Any]) -> Any:
    """The kombu connection `make` returns from the transport options it is given, gated: the
    dispatcher that publishes on it drops events while RabbitMQ blocks it."""
    gate = Gate()
    connection = make(gate.callbacks())
    _gates[connection] = gate
    return connection


def gate_of(connection: Any) -> Gate | None:
    """The gate of a connection `gated` made; None for any other (or none)."""
    return None if connection is None else _gates.get(connection)


class GatedEventDispatcher(EventDispatcher):
    """Celery's dispatcher, dropping what it would publish while its connection is blocked."""

    def _publish(
        self, event: Any, producer: Any, routing_key: str, *args: Any, **kwargs: Any
    ) -> Any:
        # No connection for a client's dispatcher: its task-sent events go with the task's own
        # producer.
        held = gate_of(self.connection)
        if held is not None and held.blocked is not None:
            held.dropped += len(event) if isinstance(event, list) else 1
            return None
        # Every event goes through _publish, one at a time or a group's batch; the stubs lack it.
        return super()._publish(event, producer, routing_key, *args, **kwargs)  # type: ignore[misc]


class Events(CeleryEvents):
    """`app.events`, whose dispatcher is the gated one."""

    dispatcher_cls = f"{__name__}:GatedEventDispatcher"
