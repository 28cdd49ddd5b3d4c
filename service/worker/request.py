"""Celery's Request, changed so that a hard time limit and an expired message end in the
dead-letter queue."""

from __future__ import annotations

from typing import Any

from billiard.einfo import ExceptionWithTraceback  # type: ignore[attr-defined]
from celery.exceptions import TimeLimitExceeded
from celery.worker import state
from celery.worker.request import Request


class DeadLetteringRequest(Request):
    """A request whose hard time-out, or whose message expired, rejects its message without
    requeue.

    Celery (5.7) either acks a hard time-out (`task_acks_on_timeout=True`: the message is gone) or
    requeues it (`False`: it runs, times out and is requeued forever, or until a quorum queue's
    delivery limit). Neither lets the broker dead-letter it with the reason `rejected`. Billiard
    may report the time-out through `on_failure` before or after `on_timeout`; both mark it.

    A message past its `expires` Celery acks unrun ("Discarding revoked task"): a task whose
    retry came after its expiry was gone, its run left RETRY for good. It is dead-lettered now,
    its run recorded as expired (service.worker.lifecycle), to be re-published by an operator if
    it still matters (re-publishing drops a past `expires`). A task revoked by id is still acked:
    someone asked for that. So is an expired message of a task marked `stale_dropped` (the
    periodic maintenance tasks: a stale tick is pointless, the next one does its work).
    """

    _hard_time_limit_hit = False
    _expired = False
    _revoked_before = False

    def revoked(self) -> bool:
        # Celery marks an expired task revoked by id before it says it expired: a task revoked
        # by someone, and expired too, stays revoked (acked, as asked).
        self._revoked_before = self.id in state.revoked
        revoked: bool = super().revoked()
        return revoked

    def _announce_revoked(
        self, reason: str, terminated: bool, signum: int | None, expired: bool
    ) -> None:
        self._expired = expired and not self._revoked_before
        super()._announce_revoked(reason, terminated, signum, expired)  # type: ignore[misc]
        if self._expired:
            # Celery counts an expired task as revoked by id from then on (for hours, in this
            # worker): its letter re-published would be acked unrun, as revoked. Expiry is the
            # message's, not the task's.
            state.revoked.discard(self.id)

    def acknowledge(self) -> None:
        if self._expired and not getattr(self.task, "stale_dropped", False):
            self.reject(requeue=False)
        else:
            super().acknowledge()

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
