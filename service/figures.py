"""The figures operators watch, for /tasks/stats and /metrics alike: tasks per state, dead letters
by reason and queue, recent throughput, reconciled documents (from the store), and the queues'
depth and consumers (from RabbitMQ's management API)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta

import httpx
import msgspec
from sqlalchemy import Connection

from service.broker.management import Management
from service.errors import BrokerUnavailable
from service.store import dead_letters, documents, redrives, task_runs
from service.store.schema import utcnow
from service.topology import DEAD_LETTER_QUEUE, WORK_QUEUES


class StoreFigures(msgspec.Struct, frozen=True, kw_only=True):
    states: dict[str, int]
    dead_letters: list[tuple[str, str, int]]
    """(reason, queue, count) of the letters neither discarded nor superseded."""
    finished_last_minute: dict[str, int]
    finished_last_hour: dict[str, int]
    reconciled: int


OTHER = "other"
"""The label of a dead letter's reason or queue that is neither RabbitMQ's nor docproc's."""
LETTER_QUEUES = frozenset({*WORK_QUEUES, DEAD_LETTER_QUEUE, "unknown"})
"""Queues a dead letter's label may name: docproc's, and its word for a letter that names none."""


def dead_letter_series(counts: Iterable[tuple[str, str, int]]) -> list[tuple[str, str, int]]:
    """`counts` (StoreFigures.dead_letters) as /metrics labels them: a reason or queue that is
    not RabbitMQ's or docproc's is "other", its letters added up there. A message published
    straight to docproc.dlx says whatever reason and queue it likes, and the letter keeps what it
    said; as labels, each new pair was a new series in Prometheus."""
    series: dict[tuple[str, str], int] = {}
    for reason, queue, count in counts:
        key = (
            reason if reason in dead_letters.REASONS else OTHER,
            queue if queue in LETTER_QUEUES else OTHER,
        )
        series[key] = series.get(key, 0) + count
    return [(reason, queue, count) for (reason, queue), count in series.items()]


class QueueFigures(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    messages: int
    ready: int
    unacknowledged: int
    consumers: int


def from_store(connection: Connection) -> StoreFigures:
    """Everything the store can say, in one transaction."""
    now = utcnow()
    return StoreFigures(
        states=task_runs.count_by_state(connection),
        dead_letters=dead_letters.counts(connection),
        finished_last_minute=task_runs.finished_since(connection, now - timedelta(minutes=1)),
        finished_last_hour=task_runs.finished_since(connection, now - timedelta(hours=1)),
        reconciled=documents.reconciled(connection),
    )


class AlertFigures(msgspec.Struct, frozen=True, kw_only=True):
    """What /metrics adds for alerts: how long the oldest accepted document has waited to
    start, and redrive items by outcome."""

    oldest_pending_seconds: float
    redrive_items: dict[str, int]


def for_alerts(connection: Connection) -> AlertFigures:
    oldest = task_runs.oldest_pending(connection)
    waited = (utcnow() - oldest).total_seconds() if oldest is not None else 0.0
    return AlertFigures(
        oldest_pending_seconds=max(0.0, waited), redrive_items=redrives.item_counts(connection)
    )


async def of_queues(management: Management) -> tuple[list[QueueFigures], list[str]]:
    """docproc's queues as RabbitMQ sees them, and a warning instead when it cannot be asked."""
    try:
        found = {queue.name: queue for queue in await management.queues()}
    except BrokerUnavailable as exc:
        return [], [f"queue figures unavailable: {exc}"]
    except httpx.HTTPStatusError as exc:  # a node that answers with an error (a 503 at start)
        return [], [f"queue figures unavailable: the management API answered {exc}"]
    except msgspec.MsgspecError as exc:  # an answer that is not the management API's
        return [], [f"queue figures unavailable: the management API's answer: {exc}"]
    return [
        QueueFigures(
            name=name,
            messages=found[name].messages,
            ready=found[name].messages_ready,
            unacknowledged=found[name].messages_unacknowledged,
            consumers=found[name].consumers,
        )
        for name in (*WORK_QUEUES, DEAD_LETTER_QUEUE)
        if name in found
    ], []
