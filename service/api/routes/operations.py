"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Iterator
from typing import Any

import httpx
from litestar import Response, get
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import Connection, text

from service import figures
from service.api.models import Health, Readiness
from service.api.problems import problem
from service.api.responses import errors
from service.api.services import ManagementDep, PublisherDep, SettingsDep, StoreDep
from service.broker.management import Management
from service.broker.publisher import ROUND_TRIP_ERRORS, Publisher, TaskPublisher
from service.errors import DatabaseError
from service.redaction import redact
from service.settings import Settings
from service.store.database import AsyncStore

READY_TIMEOUT = 2.0
"""Seconds /ready waits for the store's answer, and for the broker's."""
NO_ANSWER = (
    f"no answer within {READY_TIMEOUT:g} s on a connection that looks up (a link that drops "
    "what is sent, or a memory or disk alarm blocking the connection)"
)
QUEUE_FIGURES_TIMEOUT = 3.0
"""Seconds /metrics waits for RabbitMQ's management API, whatever its number of nodes: well
within Prometheus' scrape timeout (10 s), so that a management API that hangs costs the queue
series (and says so: docproc_management_up 0), not the whole target."""


@get("/health", tags=["operations"], summary="Liveness: answers while the process lives")
async def health() -> Health:
    return Health()


def _ping(connection: Connection) -> None:
    connection.execute(text("SELECT 1"))


async def _store_state(store: AsyncStore) -> str:
    try:
        await asyncio.wait_for(store.run(_ping), READY_TIMEOUT)
    except (DatabaseError, TimeoutError) as exc:
        return f"unavailable: {exc}" if str(exc) else "unavailable: no answer"
    return "ok"


async def _broker_state(publisher: TaskPublisher) -> str:
    if not publisher.connected:
        return "not connected"
    if not isinstance(publisher, Publisher):
        return "ok"  # a fake of tests about HTTP: no broker behind it
    try:
        await publisher.round_trip(READY_TIMEOUT)
    except TimeoutError:
        return f"unavailable: {NO_ANSWER}"
    except ROUND_TRIP_ERRORS as exc:
        return f"unavailable: {redact(str(exc)) or type(exc).__name__}"
    return "ok"


@get(
    "/ready",
    tags=["operations"],
    responses=errors(503),
    summary="Readiness: the broker and the store answer",
    description="503 problem+json naming what is down when one of them does not answer within "
    f"{READY_TIMEOUT:g} s.",
)
async def ready(store: StoreDep, publisher: PublisherDep) -> Response[Any]:
    broker, database = await asyncio.gather(_broker_state(publisher), _store_state(store))
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
        self.management_up = True
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
        management_up = GaugeMetricFamily(
            "docproc_management_up",
            "Whether RabbitMQ's management API answered the scrape in time (the queue series "
            "come from it, and are left out when it did not)",
        )
        management_up.add_metric([], 1 if self.management_up else 0)
        yield from (tasks, depth, consumers, dead, reconciled, store_up, management_up)
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


def _registry(settings: Settings) -> CollectorRegistry:
    """This process's metrics; or, with several API processes, the sum of all of theirs — each
    scrape reaches one of them, which would otherwise answer with its own counts alone. They
    write them into the directory `docproc serve api` made for them (prometheus_client's
    multiprocess mode, which reads the variable when it is imported)."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR") if settings.api_workers > 1 else None
    return REGISTRY if directory is None else _summed(directory)


@functools.cache
def _summed(directory: str) -> CollectorRegistry:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    registry.register(DOMAIN)
    return registry


async def _scrape_store(store: AsyncStore) -> None:
    try:
        found, DOMAIN.alerts = await store.run(_scrape)
        DOMAIN.tasks, DOMAIN.dead, DOMAIN.reconciled = (
            found.states,
            figures.dead_letter_series(found.dead_letters),
            found.reconciled,
        )
        DOMAIN.store_up = True
    except DatabaseError:
        DOMAIN.tasks, DOMAIN.dead, DOMAIN.store_up, DOMAIN.alerts = {}, [], False, None


async def _scrape_queues(management: Management) -> None:
    try:
        async with asyncio.timeout(QUEUE_FIGURES_TIMEOUT):
            queues, warnings = await figures.of_queues(management)
        answered = not warnings  # a warning: no node answered, or they refused the credentials
    except (TimeoutError, httpx.HTTPError):  # late, or broken off
        queues, answered = [], False
    DOMAIN.queues = [(q.name, q.messages, q.consumers) for q in queues]
    DOMAIN.management_up = answered


@get(
    "/metrics",
    tags=["operations"],
    summary="Prometheus metrics: HTTP and docproc's figures",
    # Prometheus' text format; Litestar adds the charset.
    media_type="text/plain; version=0.0.4",
)
async def metrics(
    settings: SettingsDep, store: StoreDep, management: ManagementDep
) -> Response[bytes]:
    await asyncio.gather(_scrape_store(store), _scrape_queues(management))
    return Response(generate_latest(_registry(settings)))
