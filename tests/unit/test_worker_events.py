"""The gate on the worker's task events: dropped while RabbitMQ blocks their connection, counted,
and published again once it unblocks. The broker's side (a real alarm, a real backlog) is in
tests/integration/test_blocked_broker.py; here, the gate's own logic, with a recording producer.
"""

from __future__ import annotations

from typing import Any

from kombu import Connection

from service.worker.app import create_celery
from service.worker.events import GatedEventDispatcher, gate_of, gated


class RecordingProducer:
    def __init__(self) -> None:
        self.published: list[Any] = []

    def publish(self, body: Any, **_: Any) -> None:
        self.published.append(body)


def test_events_are_dropped_while_the_connection_is_blocked_and_counted() -> None:
    options: dict[str, Any] = {}

    def make(callbacks: dict[str, Any]) -> Connection:
        options.update(callbacks)
        return Connection("memory://")

    connection = gated(make)
    gate = gate_of(connection)
    assert gate is not None
    dispatcher = GatedEventDispatcher(connection, hostname="w@test", enabled=False)
    producer = RecordingProducer()

    dispatcher._publish({"type": "task-received"}, producer, "task.received")
    options["on_blocked"]("connection blocked, see broker logs")
    dispatcher._publish({"type": "task-started"}, producer, "task.started")
    dispatcher._publish([{"type": "a"}, {"type": "b"}], producer, "task.multi")  # a batch
    assert gate.dropped == 3
    options["on_unblocked"]()
    assert gate.dropped == 0
    dispatcher._publish({"type": "task-succeeded"}, producer, "task.succeeded")

    assert [event["type"] for event in producer.published] == ["task-received", "task-succeeded"]


def test_a_dispatcher_on_a_connection_not_gated_publishes() -> None:
    """A client's dispatcher has no connection of its own (its task-sent events go with the
    task's producer), and a connection made elsewhere has no gate."""
    producer = RecordingProducer()
    for connection in (None, Connection("memory://")):
        GatedEventDispatcher(connection, hostname="w@test", enabled=False)._publish(
            {"type": "task-sent"}, producer, "task.sent"
        )
    assert len(producer.published) == 2


def test_the_worker_app_dispatches_through_the_gate() -> None:
    app = create_celery()
    assert issubclass(app.events.Dispatcher, GatedEventDispatcher)
