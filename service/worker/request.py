"""Celery's Request, changed so that a hard time limit ends in the dead-letter queue."""

from __future__ import annotations

from typing import Any

from billiard.einfo import ExceptionWithTraceback  # type: ignore[attr-defined]
from celery.exceptions import TimeLimitExceeded
from celery.worker.request import Request


class DeadLetteringRequest(Request):
    """A request whose hard time-out rejects its message without requeue.

    Celery (5.7) either acks a hard time-out (`task_acks_on_timeout=True`: the message is gone) or
    requeues it (`False`: it runs, times out and is requeued forever, or until a quorum queue's
    delivery limit). Neither lets the broker dead-letter it with the reason `rejected`. Billiard
    may report the time-out through `on_failure` before or after `on_timeout`; both mark it.
    """

    _hard_time_limit_hit = False

    def on_timeout(self, soft: bool, timeout: float) -> None:
        if not soft:
            self._hard_time_limit_hit = True
        super().on_timeout(soft, timeout)

    def on_failure(
        self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False
    ) -> None:
        exc = exc_info.exception
        if isinstance(exc, ExceptionWithTraceback):
            exc = exc.exc
        if isinstance(exc, TimeLimitExceeded):
            self._hard_time_limit_hit = True
        super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)

    def reject(self, requeue: bool = False) -> None:
        super().reject(requeue=requeue and not self._hard_time_limit_hit)
