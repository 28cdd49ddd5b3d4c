"""The base class of every docproc task: transient errors retry, everything else dead-letters.

Three kinds of retry, all through `retry_queue` and the broker's delay, never in worker memory:

- a transient error of the work (the full-text index, a broker hiccup) spends the retry budget
  (`CELERY_MAX_RETRIES`), with exponential backoff and jitter;
- the store being unavailable does not: the task waits for it, as often as it takes, and the
  worker stops taking new work meanwhile (worker.store_watch);
- a permanent failure that cannot be recorded because the store is down waits the same way,
  carrying the failure in its headers; when it comes back it is recorded and dead-lettered at
  once, without running the work again.

Every retry carries its last failure in its headers, so a message dead-lettered while the store
was down still says why it died. A retry that cannot be published because RabbitMQ cannot be
reached (it refuses the pool process's connection, or drops it) sends its message back to its
queue after the retry's pause, at most UNPUBLISHED_RETRY_PAUSE, instead of Celery's rejection
without requeue — which dead-lettered a transient failure as `rejected`, its run FAILURE; the
queue's delivery limit bounds how often.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from celery import Task
from celery.exceptions import Reject, Retry, SoftTimeLimitExceeded
from loguru import logger

from service.errors import (
    DatabaseError,
    DocprocError,
    ProcessingError,
    StoreUnavailable,
    error_type_of,
)
from service.logs import CORRELATION_HEADER
from service.store import outcomes, task_runs
from service.task_contract import (
    ERROR_MESSAGE_HEADER,
    ERROR_TYPE_HEADER,
    PENDING_FAILURE_HEADER,
    STORE_WAITS_HEADER,
)
from service.topology import RETRY_QUEUE
from service.worker.docproc_celery import app_of
from service.worker.retry_policy import backoff_delay

_NOT_CARRIED = (
    "x-death",
    "x-first-death-",
    "x-last-death-",
    "x-delivery-count",
    PENDING_FAILURE_HEADER,
)
MESSAGE_LIMIT = 2000
"""Characters of an error message carried in headers."""
STORE_WAIT_MAX = 300.0
"""The longest pause between two looks at an unavailable store."""
UNPUBLISHED_RETRY_PAUSE = 5.0
"""The longest a pool process waits before it sends back to its queue a message whose retry it
could not publish: each return spends one of the queue's deliveries (DOCPROC_DELIVERY_LIMIT)."""


def budget_retries(request: Any) -> int:
    """Retries that spent the task's budget: not the ones that only waited for the store."""
    waits = request.get(STORE_WAITS_HEADER)
    return max(0, (request.retries or 0) - (waits if isinstance(waits, int) and waits > 0 else 0))


class UnrecordedFailure(ProcessingError):
    """A permanent failure met while the store was down, raised again once it is back."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type

    def __reduce__(self) -> tuple[type[UnrecordedFailure], tuple[str, str]]:
        # As itself, with its type, out of the pool process: Celery otherwise sends on the
        # nearest class it can pickle (ProcessingError), and that is what was recorded.
        return UnrecordedFailure, (self.error_type, str(self))


class DocprocTask(Task):  # type: ignore[type-arg]
    """Retries `transient` docproc errors through `retry_queue`, with backoff, in the broker.

    Not `autoretry_for`: that also catches Celery's Reject, and its full jitter can pick a zero
    delay. Once the budget is spent, the error is raised again, the request rejects the message,
    and RabbitMQ dead-letters it.
    """

    Request = "service.worker.request:DeadLetteringRequest"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            self._pending_failure()
            return super().__call__(*args, **kwargs)
        except Retry:
            raise
        except StoreUnavailable as exc:
            raise self.wait_for_store(exc) from exc
        except DocprocError as exc:
            if exc.transient:
                raise self.retry_later(exc) from exc
            self._settle(exc)
            raise
        except Exception as exc:
            self._settle(exc)
            raise

    def _pending_failure(self) -> None:
        """A failure the store could not take comes back with its retry, raised again here
        before the work: recorded then (`_settle`), or waited for again while the store is still
        away — never dead-lettered unrecorded.

        The headers are taken on trust: the store holds nothing to check them against (it was
        away when they were written), and a forged one does no more than a message published
        straight to docproc.dlx, which also ends its task's run under a failure it names. The
        work's metrics label only the types docproc knows (service.worker.metrics.error_label)."""
        if self.request.get(PENDING_FAILURE_HEADER):
            raise UnrecordedFailure(
                str(self.request.get(ERROR_TYPE_HEADER) or "Failure"),
                str(self.request.get(ERROR_MESSAGE_HEADER) or ""),
            )

    def _settle(self, exc: Exception) -> None:
        """Record a permanent failure before the message is rejected; when the store cannot take
        it, wait for the store instead (the failure travels in the retry's headers)."""
        try:
            app_of(self).store.run(
                outcomes.task_failed,
                str(self.request.id),
                self.name,
                state="FAILURE",
                error_type=error_type_of(exc),
                message=str(exc),
            )
        except StoreUnavailable as unrecorded:
            logger.warning("cannot record the failure, waiting for the store: {}", unrecorded)
            raise self.wait_for_store(exc, pending=True) from exc
        except DatabaseError as unrecorded:
            # The store is there but refused this record: the dead letter's headers carry it.
            logger.warning("cannot record the failure: {}", unrecorded)

    def _headers(self, exc: BaseException, **extra: Any) -> dict[str, Any]:
        """The retry's own headers: what the message carried (correlation, lineage) but its
        death and delivery counts — RabbitMQ < 4 reads those — and its last failure."""
        carried = {
            key: value
            for key, value in vars(self.request).items()
            if key.startswith("x-") and not key.startswith(_NOT_CARRIED)
        }
        return (
            carried
            | {
                CORRELATION_HEADER: self.request.get(CORRELATION_HEADER),
                STORE_WAITS_HEADER: self._store_waits(),
                ERROR_TYPE_HEADER: error_type_of(exc),
                ERROR_MESSAGE_HEADER: str(exc)[:MESSAGE_LIMIT],
            }
            | extra
        )

    def _store_waits(self) -> int:
        waits = self.request.get(STORE_WAITS_HEADER)
        return waits if isinstance(waits, int) and waits >= 0 else 0

    def wait_for_store(self, exc: Exception, *, pending: bool = False) -> Retry:
        settings = app_of(self).settings
        waits = self._store_waits() + 1
        delay = backoff_delay(
            waits, settings.retry_delay, min(settings.retry_backoff_max, STORE_WAIT_MAX)
        )
        logger.warning("the store is unavailable; task waits {} s for it: {}", delay, exc)
        headers = self._headers(exc, **{STORE_WAITS_HEADER: waits})
        if pending:
            headers[PENDING_FAILURE_HEADER] = True
        return self._retry(
            exc,
            delay,
            max_retries=self.request.retries + 1,  # not counted: never exhausted
            headers=headers,
        )

    def retry_later(self, exc: DocprocError) -> Retry:
        settings = app_of(self).settings
        waits = self._store_waits()
        attempt = budget_retries(self.request) + 1
        delay = backoff_delay(attempt, settings.retry_delay, settings.retry_backoff_max)
        if attempt <= settings.max_retries:
            try:
                app_of(self).store.run(
                    task_runs.record_retry,
                    str(self.request.id),
                    retries=attempt,
                    delay=delay,
                    error_type=error_type_of(exc),
                    message=str(exc),
                )
            except DatabaseError as unrecorded:
                logger.warning("cannot record the retry: {}", unrecorded)
        else:
            self._settle(exc)
        return self._retry(
            exc, delay, max_retries=settings.max_retries + waits, headers=self._headers(exc)
        )

    def _retry(self, exc: Exception, delay: float, **options: Any) -> Retry:
        """Celery's retry through `retry_queue` after `delay`; when RabbitMQ cannot be reached to
        publish it, the message goes back to its queue instead of being rejected."""
        try:
            return self.retry(exc=exc, countdown=delay, queue=RETRY_QUEUE, throw=False, **options)
        except Reject as unpublished:  # Celery's answer to any failure to publish the retry
            reason = unpublished.args[0]  # Reject(reason, requeue)
            if not isinstance(reason, Exception) or not isinstance(
                reason, self.app.connection_for_write().connection_errors
            ):
                raise  # not the broker away: an error a second delivery would meet again
            pause = min(delay, UNPUBLISHED_RETRY_PAUSE)
            logger.warning(
                "cannot publish the task's retry ({}); its message goes back to its queue in "
                "{:g} s",
                reason,
                pause,
            )
            with contextlib.suppress(SoftTimeLimitExceeded):  # the pause, cut short: as well
                time.sleep(pause)
            raise Reject(reason, requeue=True) from exc
