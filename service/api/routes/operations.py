"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

from litestar import Response, get
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Connection, text

from service import figures
from service.api.models import Health, Readiness
from service.api.problems import problem
from service.api.responses import errors
from service.api.services import ManagementDep, PublisherDep, StoreDep
from service.errors import DatabaseError

READY_TIMEOUT = 2.0


@get("/health", tags=["operations"], summary="Liveness: answers while the process lives")
async def health() -> Health:
    return Health()


def _ping(connection: Connection) -> None:
    connection.execute(text("SELECT 1"))


@get(
    "/ready",
    tags=["operations"],
    responses=errors(503),
    summary="Readiness: the broker and the store answer",
    description="503 problem+json naming what is down when one of them does not.",
)
async def ready(store: StoreDep, publisher: PublisherDep) -> Response[Any]:
    broker = "ok" if publisher.connected else "not connected"
    try:
        await asyncio.wait_for(store.run(_ping), READY_TIMEOUT)
        database = "ok"
    except (DatabaseError, TimeoutError) as exc:
        database = f"unavailable: {exc}" if str(exc) else "unavailable: no answer"
    if broker == "ok" and database == "ok":
        return Response(Readiness(status="ready", broker=broker, store=database))
    down = [name for name, state in (("broker", broker), ("store", database)) if state != "ok"]
    return problem(503, "Not ready", f"down: {', '.join(down)}", broker=broker, store=database)


class DomainCollector(Collector):
    """docproc's figures, as of the last scrape: tasks per state, queues, dead letters."""

    def __init__(self) -> None:
        self.tasks: dict[str, int] = {}
        self.queues: list[tuple[str, int, int]] = []
        self.dead: list[tuple[str, str, int]] = []
        self.reconciled = 0
        self.store_up = True
        self.alerts: figures.AlertFigures | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        tasks = GaugeMetricFamily("docproc_tasks", "Task runs per state", labels=["state"])
        for state, count in self.tasks.items():
            tasks.add_metric([state], count)
        depth = GaugeMetricFamily("docproc_queue_messages", "Messages in a queue", labels=["queue"])
        consumers = GaugeMetricFamily(
            "docproc_queue_consumers", "Consumers of a queue", labels=["queue"]
        )
        for queue, messages, count in self.queues:
            depth.add_metric([queue], messages)
            consumers.add_metric([queue], count)
        dead = GaugeMetricFamily(
            "docproc_dead_letters",
            "Dead letters kept, by reason and queue",
            labels=["reason", "queue"],
        )
        for reason, queue, count in self.dead:
            dead.add_metric([reason, queue], count)
        reconciled = GaugeMetricFamily(
            "docproc_reconciled_documents",
            "Times beat re-published a document whose confirmed task message was lost",
        )
        reconciled.add_metric([], self.reconciled)
        store_up = GaugeMetricFamily("docproc_store_up", "Whether the store answered the scrape")
        store_up.add_metric([], 1 if self.store_up else 0)
        yield from (tasks, depth, consumers, dead, reconciled, store_up)
        if self.alerts is not None:
            yield from _alert_metrics(self.alerts)


def _alert_metrics(found: figures.AlertFigures) -> Iterator[GaugeMetricFamily]:
    yield GaugeMetricFamily(
        "docproc_oldest_pending_task_seconds",
        "How long the longest-waiting accepted document has waited to start (0: none waits)",
        value=found.oldest_pending_seconds,
    )
    items = GaugeMetricFamily(
        "docproc_redrive_items",
        "Dead letters of redrive jobs re-published or failed, over the jobs kept",
        labels=["state"],
    )
    for state, count in found.redrive_items.items():
        items.add_metric([state], count)
    yield items


def _scrape(connection: Connection) -> tuple[figures.StoreFigures, figures.AlertFigures]:
    return figures.from_store(connection), figures.for_alerts(connection)


DOMAIN = DomainCollector()
REGISTRY.register(DOMAIN)


@get(
    "/metrics",
    tags=["operations"],
    summary="Prometheus metrics: HTTP and docproc's figures",
    # Prometheus' text format; Litestar adds the charset.
    media_type="text/plain; version=0.0.4",
)
async def metrics(store: StoreDep, management: ManagementDep) -> Response[bytes]:
    try:
        found, DOMAIN.alerts = await store.run(_scrape)
        DOMAIN.tasks, DOMAIN.dead, DOMAIN.reconciled = (
            found.states,
            found.dead_letters,
            found.reconciled,
        )
        DOMAIN.store_up = True
    except DatabaseError:
        DOMAIN.tasks, DOMAIN.dead, DOMAIN.store_up, DOMAIN.alerts = {}, [], False, None
    queues, _ = await figures.of_queues(management)
    DOMAIN.queues = [(q.name, q.messages, q.consumers) for q in queues]
    return Response(generate_latest(REGISTRY))
