"""How the broker's topology differs from ours: a pure comparison, testable without a broker."""

from __future__ import annotations

from collections.abc import Iterable

from service.broker.management import BindingInfo, ExchangeInfo, Management, QueueInfo
from service.topology import Queue, Topology


def queue_differences(expected: Queue, actual: QueueInfo) -> list[str]:
    """Each argument that differs, in words; empty when the two are equivalent."""
    found = dict(actual.arguments)
    # A queue declared without x-queue-type is classic; the API reports the type on its own.
    found["x-queue-type"] = actual.type
    differences = []
    for key, value in expected.arguments.items():
        if key not in found:
            differences.append(f"{key} is not set, docproc expects {value!r}")
        elif found[key] != value:
            differences.append(f"{key} is {found[key]!r}, docproc expects {value!r}")
    differences.extend(
        f"{key} is {found[key]!r}, docproc does not set it"
        for key in sorted(found.keys() - expected.arguments.keys())
    )
    if not actual.durable:
        differences.append("it is not durable")
    return differences


def compare(
    topology: Topology,
    exchanges: Iterable[ExchangeInfo],
    queues: Iterable[QueueInfo],
    bindings: Iterable[BindingInfo],
) -> list[str]:
    """Every way the broker's objects differ from `topology`; objects it lacks are ignored."""
    found_exchanges = {exchange.name: exchange for exchange in exchanges}
    found_queues = {queue.name: queue for queue in queues}
    found_bindings = {
        (b.source, b.destination, b.destination_type, b.routing_key) for b in bindings
    }
    differences = []
    for exchange in topology.exchanges:
        actual = found_exchanges.get(exchange.name)
        if actual is None:
            differences.append(f"exchange {exchange.name}: missing")
        elif actual.type != exchange.type or not actual.durable:
            durable = "durable" if actual.durable else "not durable"
            differences.append(
                f"exchange {exchange.name}: is {actual.type} and {durable}, "
                f"docproc expects {exchange.type} and durable"
            )
    for queue in topology.queues:
        actual_queue = found_queues.get(queue.name)
        if actual_queue is None:
            differences.append(f"queue {queue.name}: missing")
            continue
        differences.extend(
            f"queue {queue.name}: {difference}"
            for difference in queue_differences(queue, actual_queue)
        )
    for binding in topology.bindings:
        key = (binding.source, binding.destination, binding.destination_type, binding.routing_key)
        if key not in found_bindings:
            differences.append(
                f"binding {binding.source} -> {binding.destination_type} {binding.destination} "
                f"with routing key {binding.routing_key!r}: missing"
            )
    return differences


async def check(topology: Topology, management: Management) -> list[str]:
    """Read the broker's topology through the management API and compare; changes nothing."""
    return compare(
        topology,
        await management.exchanges(),
        await management.queues(),
        await management.bindings(),
    )
