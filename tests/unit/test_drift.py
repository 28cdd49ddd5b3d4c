from __future__ import annotations

from service.broker.drift import compare
from service.broker.management import BindingInfo, ExchangeInfo, QueueInfo
from service.settings import Settings
from service.topology import build_topology


def broker_as_declared() -> tuple[list[ExchangeInfo], list[QueueInfo], list[BindingInfo]]:
    topology = build_topology(Settings(queue_type="classic"))
    exchanges = [ExchangeInfo(name=e.name, type=e.type) for e in topology.exchanges]
    queues = [
        QueueInfo(
            name=q.name,
            type=str(q.arguments["x-queue-type"]),
            arguments=dict(q.arguments),
        )
        for q in topology.queues
    ]
    bindings = [
        BindingInfo(
            source=b.source,
            destination=b.destination,
            destination_type=b.destination_type,
            routing_key=b.routing_key,
        )
        for b in topology.bindings
    ]
    return exchanges, queues, bindings


def test_a_broker_as_declared_has_no_drift() -> None:
    assert compare(build_topology(Settings(queue_type="classic")), *broker_as_declared()) == []


def test_every_kind_of_drift_is_named() -> None:
    exchanges, queues, bindings = broker_as_declared()
    exchanges = [ExchangeInfo(name="docproc", type="direct"), *exchanges[1:]]
    queues = [
        QueueInfo(name="document_processing", type="classic", arguments={"x-max-length": 10}),
        *[q for q in queues if q.name not in ("document_processing", "retry_queue")],
    ]
    bindings = [b for b in bindings if b.destination != "celery"]

    differences = compare(
        build_topology(Settings(queue_type="classic")), exchanges, queues, bindings
    )

    assert differences == [
        "exchange docproc: is direct and durable, docproc expects topic and durable",
        "queue document_processing: x-dead-letter-exchange is not set, "
        "docproc expects 'docproc.dlx'",
        "queue document_processing: x-dead-letter-routing-key is not set, "
        "docproc expects 'document_processing'",
        "queue document_processing: x-max-length is 10, docproc does not set it",
        "queue retry_queue: missing",
        "binding docproc -> queue celery with routing key 'celery': missing",
    ]


def test_a_queue_declared_without_a_type_is_classic() -> None:
    exchanges, queues, bindings = broker_as_declared()
    for queue in queues:
        queue.arguments.pop("x-queue-type")

    assert (
        compare(build_topology(Settings(queue_type="classic")), exchanges, queues, bindings) == []
    )
