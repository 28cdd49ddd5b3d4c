"""The base class of every docproc task: transient errors retry, everything else dead-letters."""

from __future__ import annotations

from typing import Any

from celery import Task
from celery.exceptions import Retry
from loguru import logger

from service.errors import DatabaseError, DocprocError
from service.store import task_runs
from service.topology import RETRY_QUEUE
from service.worker.retry_policy import backoff_delay


class DocprocTask(Task):  # type: ignore[type-arg]
    """Retries `transient` docproc errors through `retry_queue`, with backoff, in the broker.

    Not `autoretry_for`: that also catches Celery's Reject, and its full jitter can pick a zero
    delay. Once `CELERY_MAX_RETRIES` is spent, Celery re-raises the error, the request rejects the
    message, and RabbitMQ dead-letters it.
    """

    Request = "service.worker.request:DeadLetteringRequest"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except DocprocError as exc:
            if not exc.transient:
                raise
            raise self.retry_later(exc) from exc

    def retry_later(self, exc: Exception) -> Retry:
        settings = self.app.settings  # type: ignore[attr-defined]
        retries = self.request.retries + 1
        delay = backoff_delay(retries, settings.retry_delay, settings.retry_backoff_max)
        if retries <= settings.max_retries:
            try:
                self.app.store.run(  # type: ignore[attr-defined]
                    task_runs.record_retry,
                    self.request.id,
                    retries=retries,
                    delay=delay,
                    error_type=type(exc).__name__,
                    message=str(exc),
                )
            except DatabaseError as unrecorded:
                logger.warning("cannot record the retry: {}", unrecorded)
        return self.retry(
            exc=exc,
            countdown=delay,
            max_retries=settings.max_retries,
            queue=RETRY_QUEUE,
            throw=False,
        )
