"""Beat's periodic maintenance, on the `celery` queue: expire task runs, enforce dead-letter
retention, and publish documents that were accepted but whose task message was never confirmed."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery import Celery, Task
from loguru import logger

from service.logs import CORRELATION_HEADER
from service.store import dead_letters, documents, task_runs
from service.store.schema import utcnow
from service.tasks import (
    EXPIRE_TASK_RUNS,
    PROCESS_DOCUMENT,
    PUBLISH_UNPUBLISHED,
    PURGE_DEAD_LETTERS,
)
from service.topology import DOCUMENT_QUEUE

SWEEP_GRACE = timedelta(seconds=30)
"""How old an unconfirmed acceptance must be before the sweeper publishes it: longer than the
API's confirm timeout, so that the sweeper never races a publish still in flight."""
SWEEP_BATCH = 500

SCHEDULE: dict[str, dict[str, Any]] = {
    "expire-task-runs": {"task": EXPIRE_TASK_RUNS, "schedule": 300.0},
    "purge-dead-letters": {"task": PURGE_DEAD_LETTERS, "schedule": 3600.0},
    "publish-unpublished": {"task": PUBLISH_UNPUBLISHED, "schedule": 15.0},
}


def register(app: Celery) -> None:
    # Maintenance is idempotent and periodic: a run that overlaps the next one is pointless.
    options: dict[str, Any] = {"bind": True, "expires": 600}

    @app.task(name=EXPIRE_TASK_RUNS, **options)
    def expire_task_runs(self: Task[Any, Any]) -> int:
        settings = self.app.settings  # type: ignore[attr-defined]
        before = utcnow() - timedelta(seconds=settings.result_expires)
        expired: int = self.app.store.run(task_runs.expire, before)  # type: ignore[attr-defined]
        logger.info("expired {} task runs finished before {}", expired, before.isoformat())
        return expired

    @app.task(name=PURGE_DEAD_LETTERS, **options)
    def purge_dead_letters(self: Task[Any, Any]) -> int:
        settings = self.app.settings  # type: ignore[attr-defined]
        now = utcnow()
        purged: int = self.app.store.run(  # type: ignore[attr-defined]
            dead_letters.purge,
            dead_before=now - timedelta(seconds=settings.dead_letter_retention),
            handled_before=now - timedelta(seconds=settings.handled_dead_letter_retention),
        )
        logger.info("purged {} dead letters past their retention", purged)
        return purged

    @app.task(name=PUBLISH_UNPUBLISHED, **options)
    def publish_unpublished(self: Task[Any, Any]) -> int:
        """Publish what the API accepted but could not get confirmed (broker down or blocked,
        API killed between commit and publish). The client never has to resubmit."""
        store = self.app.store  # type: ignore[attr-defined]
        waiting = store.run(documents.unpublished, utcnow() - SWEEP_GRACE, SWEEP_BATCH)
        for document in waiting:
            self.app.send_task(
                PROCESS_DOCUMENT,
                kwargs={"document_id": document.id},
                task_id=document.task_id,
                queue=DOCUMENT_QUEUE,
                headers={CORRELATION_HEADER: document.correlation_id or document.task_id},
            )
            store.run(documents.mark_published, document.id)
            logger.bind(document_id=document.id, task_id=document.task_id).info(
                "published an accepted document whose task was never confirmed"
            )
        return len(waiting)
