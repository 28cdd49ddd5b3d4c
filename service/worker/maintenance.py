"""Beat's periodic maintenance, on the `celery` queue: expire task runs, enforce dead-letter
retention, and publish documents that were accepted but whose task message was never confirmed."""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import amqp.exceptions
import kombu.exceptions
from celery import Celery, Task
from loguru import logger

from service.errors import BrokerUnavailable, DatabaseError
from service.logs import CORRELATION_HEADER
from service.store import dead_letters, documents, idempotency, leases, task_runs
from service.store.database import Store
from service.store.documents import Document
from service.store.schema import utcnow
from service.task_contract import (
    EXPIRE_TASK_RUNS,
    PROCESS_DOCUMENT,
    PUBLISH_UNPUBLISHED,
    PURGE_DEAD_LETTERS,
    RECONCILE,
    RECONCILE_MARKER,
    queue_for,
)
from service.worker.docproc_celery import app_of

SWEEP_BATCH = 500
RETENTION_BATCH = 5_000
"""Rows a retention delete removes in one transaction."""

RECONCILE_BATCH = 500
SUPERSEDE_LOOKBACK = timedelta(minutes=15)
"""How far back expire-task-runs (every 5 minutes) looks for tasks that succeeded while one of
their dead letters was being stored (`dead_letters.supersede_recent`)."""

SCHEDULE: dict[str, dict[str, Any]] = {
    "expire-task-runs": {"task": EXPIRE_TASK_RUNS, "schedule": 300.0},
    "purge-dead-letters": {"task": PURGE_DEAD_LETTERS, "schedule": 3600.0},
    "publish-unpublished": {"task": PUBLISH_UNPUBLISHED, "schedule": 15.0},
    "reconcile": {"task": RECONCILE, "schedule": 300.0},
}


_UNAVAILABLE = (
    DatabaseError,
    BrokerUnavailable,
    kombu.exceptions.OperationalError,
    amqp.exceptions.AMQPError,
    ConnectionError,
    TimeoutError,
)
"""What the store or RabbitMQ raise while they are unavailable (a publish of the sweeper or of
reconciliation refused, its connection lost)."""


def _skipped_while_unavailable(task: Callable[..., int]) -> Callable[..., int]:
    """Maintenance is periodic and idempotent: when the store or RabbitMQ is down, the next run
    does it. Never a retry, never a dead letter (a publish RabbitMQ refused made the tick a dead
    letter, counted as a failure, that an operator could redrive)."""

    @functools.wraps(task)
    def run(*args: Any, **kwargs: Any) -> int:
        try:
            return task(*args, **kwargs)
        except _UNAVAILABLE as exc:
            logger.warning(
                "{} skipped, the store or RabbitMQ is unavailable: {}", task.__name__, exc
            )
            return 0

    return run


def _in_batches(store: Store, delete: Callable[..., int], *args: Any, **kwargs: Any) -> int:
    """A retention delete, RETENTION_BATCH rows a transaction until fewer are left: one
    transaction holds SQLite's one writer, and 200,000 dead letters deleted at once held every
    upload for 3.7 s."""
    total = 0
    while True:
        deleted = store.run(delete, *args, limit=RETENTION_BATCH, **kwargs)
        total += deleted
        if deleted < RETENTION_BATCH:
            return total


def _send_document_task(app: Celery, document: Document) -> None:
    """The document's task, as the API publishes it: its own task id, its correlation id."""
    app.send_task(
        PROCESS_DOCUMENT,
        kwargs={"document_id": document.id},
        task_id=document.task_id,
        queue=queue_for(PROCESS_DOCUMENT),
        headers={CORRELATION_HEADER: document.correlation_id or document.task_id},
    )


def sweep_unpublished(store: Store, publish: Callable[[Document], None], now: datetime) -> int:
    """Publish what the API accepted but could not get confirmed, each document claimed first
    (`documents.claim_to_publish`): sweeps running at once, and the API's relay, publish each
    once. A claim whose publish fails expires, and a later sweep publishes it."""
    published = 0
    for document in store.run(documents.unpublished, now - documents.PUBLISH_CLAIM, SWEEP_BATCH):
        # Each claim stamped when made (`now` is the sweep's start): a long sweep's last claims
        # would otherwise have lapsed as they were made.
        if not store.run(documents.claim_to_publish, document.id, max(now, utcnow())):
            continue  # another sweep, or the API's relay, has it
        publish(document)
        store.run(documents.mark_published, document.id)
        published += 1
        logger.bind(document_id=document.id, task_id=document.task_id).info(
            "published an accepted document whose task was never confirmed"
        )
    return published


def reconcile_lost(store: Store, publish: Callable[[Document], None], before: datetime) -> int:
    """Publish again the task of each document whose confirmed message was lost (`documents.lost`
    before `before`), each claimed first: reconciliations running at once publish each document
    once, and count it. A publish that fails gives its claim back, uncounted, and ends the run:
    the next reconciliation finds the document lost again. Nothing is lost for a while after a
    store outage (`leases.STORE_RETURNED`): tasks that waited it out are not back yet."""
    held = store.run(leases.held_until, leases.STORE_RETURNED)
    if held is not None:
        logger.info(
            "reconciliation waits until {}: tasks that waited for the store are still coming "
            "back from the broker's delay queues",
            held.isoformat(),
        )
        return 0
    republished = 0
    for document in store.run(documents.lost, before, RECONCILE_BATCH):
        claimed_at = store.run(documents.claim_reconciled, document.id, before)
        if claimed_at is None:
            continue  # another reconciliation has it
        try:
            publish(document)
        except Exception:
            try:
                store.run(
                    documents.release_reconciled, document.id, claimed_at, document.published_at
                )
            except DatabaseError as exc:  # counted, and found lost again after reconcile_after
                logger.warning("could not give back a reconciliation's claim: {}", exc)
            raise
        republished += 1
        logger.bind(document_id=document.id, task_id=document.task_id).warning(
            "re-published a document whose confirmed task message was lost"
        )
    return republished


def register(app: Celery) -> None:
    # Maintenance is idempotent and periodic: a run that overlaps the next one is pointless. A
    # tick that waited past its `expires` (workers down, consuming paused by a store outage) is
    # dropped, not dead-lettered as a document task's expired message is (`stale_dropped`,
    # service.worker.request): the next tick does its work.
    options: dict[str, Any] = {"bind": True, "expires": 600, "shared": False, "stale_dropped": True}

    @app.task(name=EXPIRE_TASK_RUNS, **options)
    @_skipped_while_unavailable
    def expire_task_runs(self: Task[Any, Any]) -> int:
        settings = app_of(self).settings
        before = utcnow() - timedelta(seconds=settings.result_expires)
        store = app_of(self).store
        failed_before = utcnow() - timedelta(seconds=settings.dead_letter_retention)
        expired = _in_batches(store, task_runs.expire, before, failed_before=failed_before)
        keys = _in_batches(store, idempotency.expire, utcnow() - idempotency.WINDOW)
        # Letters stored as their task succeeded, which neither side superseded (PostgreSQL).
        settled = store.run(dead_letters.supersede_recent, utcnow() - SUPERSEDE_LOOKBACK)
        logger.info(
            "expired {} task runs finished before {}, {} idempotency keys; superseded {} dead "
            "letters of tasks that succeeded as they were stored",
            expired,
            before.isoformat(),
            keys,
            settled,
        )
        return expired

    @app.task(name=PURGE_DEAD_LETTERS, **options)
    @_skipped_while_unavailable
    def purge_dead_letters(self: Task[Any, Any]) -> int:
        settings = app_of(self).settings
        now = utcnow()
        purged = _in_batches(
            app_of(self).store,
            dead_letters.purge,
            dead_before=now - timedelta(seconds=settings.dead_letter_retention),
            handled_before=now - timedelta(seconds=settings.handled_dead_letter_retention),
        )
        logger.info("purged {} dead letters past their retention", purged)
        return purged

    @app.task(name=RECONCILE, **options)
    @_skipped_while_unavailable
    def reconcile(self: Task[Any, Any]) -> int:
        """Send a marker into document_processing, behind every document task published so
        far: queues are first in, first out, so when a worker takes the marker, each of those
        has been delivered (reconcile_marker)."""
        self.app.send_task(
            RECONCILE_MARKER,
            kwargs={"sent_at": utcnow().isoformat()},
            queue=queue_for(RECONCILE_MARKER),
        )
        return 1  # markers sent

    @app.task(name=RECONCILE_MARKER, bind=True, shared=False)
    @_skipped_while_unavailable
    def reconcile_marker(self: Task[Any, Any], sent_at: str) -> int:
        """Every document task published before the marker has been delivered by now: one still
        PENDING (never started) and older than DOCPROC_RECONCILE_AFTER lost its message (a purged
        queue, a foreign consumer) and is published again. Counted in /tasks/stats and /metrics.
        A false alarm (a delivery the worker has not started yet) costs a duplicate message,
        which the worker skips."""
        settings = app_of(self).settings
        store = app_of(self).store
        try:
            marker = datetime.fromisoformat(sent_at)
        except (TypeError, ValueError):
            logger.warning("reconcile marker with a bad time {!r}; ignored", sent_at)
            return 0
        before = min(marker, utcnow() - timedelta(seconds=settings.reconcile_after))
        return reconcile_lost(store, functools.partial(_send_document_task, self.app), before)

    @app.task(name=PUBLISH_UNPUBLISHED, **options)
    @_skipped_while_unavailable
    def publish_unpublished(self: Task[Any, Any]) -> int:
        """Publish what the API accepted but could not get confirmed (broker down or blocked,
        API killed between commit and publish). The client never has to resubmit."""
        publish = functools.partial(_send_document_task, self.app)
        return sweep_unpublished(app_of(self).store, publish, utcnow())
