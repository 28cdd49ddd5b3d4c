"""Task states written to the store at each transition, from Celery's signals.

Best effort: a state that cannot be written is logged, never allowed to fail the task — what
happens to the message is the broker's business, and the store catches up at the next transition.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from celery import Celery, signals
from loguru import logger

from service.errors import DatabaseError, error_type_of
from service.logs import CORRELATION_HEADER, correlation_id, is_correlation_id
from service.store import outcomes
from service.store.database import Store
from service.store.task_runs import Start
from service.task_contract import REPUBLISHED_FROM_HEADER
from service.worker.base_task import budget_retries
from service.worker.docproc_celery import app_of

# Native delayed delivery prefixes the routing key with 28 binary digits.
_DELAY_PREFIX = re.compile(r"^(?:[01]\.){28}")


def queue_of(delivery_info: dict[str, Any] | None) -> str | None:
    routing_key = (delivery_info or {}).get("routing_key")
    return _DELAY_PREFIX.sub("", routing_key) if routing_key else None


def correlation_of(request: Any, task_id: str) -> str:
    """The task's correlation id: its header when the API would take it as one (anyone may
    publish a task, and a header JSON cannot encode lost the task's log lines and its run's
    record), else the id of its chain's first task, or its own."""
    given = request.get(CORRELATION_HEADER)
    return given if is_correlation_id(given) else str(request.root_id or task_id)


ATTEMPT_GRACE = 60.0
"""Seconds past the hard time limit a run's last sign of life may be and a delivery still at
work on it (`Start.busy_for`)."""


def start_of(task: Any, task_id: str, document_id: object, steps: Sequence[str] = ()) -> Start:
    """The start of the task's current run, from its request."""
    request = task.request
    republished = request.get(REPUBLISHED_FROM_HEADER) is not None
    redelivered = bool((request.delivery_info or {}).get("redelivered"))
    return Start(
        task_id=task_id,
        task_name=task.name,
        retries=budget_retries(request),
        queue=queue_of(request.delivery_info),
        worker=request.hostname,
        correlation_id=correlation_of(request, task_id),
        document_id=document_id if isinstance(document_id, str) else None,
        first_step=steps[0] if steps else None,
        steps_total=len(steps),
        republished=republished,
        redelivered=redelivered,
        first=not (request.retries or republished or redelivered),
        busy_for=app_of(task).settings.time_limit + ATTEMPT_GRACE,
    )


def records_own_run(task: Any) -> bool:
    """A task that writes its start and success with writes of its own (the document task):
    the signals below leave those two to it."""
    return bool(getattr(task, "records_own_run", False))


def connect(app: Celery, store: Callable[[], Store]) -> None:
    """Write task states for `app`'s tasks into `store()` (a store of the current process)."""

    def write(operation: Any, *args: Any, **kwargs: Any) -> None:
        try:
            store().run(operation, *args, **kwargs)
        except DatabaseError as exc:
            logger.warning("cannot record a task state: {}", exc)

    def mine(task: Any) -> bool:
        return getattr(task, "app", None) is app

    def on_prerun(task: Any, task_id: str, kwargs: dict[str, Any] | None = None, **_: Any) -> None:
        if not mine(task):
            return
        correlation_id.set(correlation_of(task.request, task_id))
        if not records_own_run(task):
            write(outcomes.task_started, start_of(task, task_id, (kwargs or {}).get("document_id")))

    def on_postrun(**_: Any) -> None:
        correlation_id.set(None)

    def on_success(sender: Any, **_: Any) -> None:
        if mine(sender) and not records_own_run(sender):
            write(outcomes.task_succeeded, sender.request.id)

    def on_failure(
        sender: Any, task_id: str, exception: BaseException, einfo: Any = None, **_: Any
    ) -> None:
        if not mine(sender):
            return
        write(
            outcomes.task_failed,
            task_id,
            sender.name,
            state="FAILURE",
            error_type=error_type_of(exception),
            message=str(exception),
            traceback=str(einfo.traceback) if einfo is not None else None,
        )

    def on_revoked(request: Any, sender: Any = None, expired: bool = False, **_: Any) -> None:
        if sender is not None and not mine(sender):
            return
        # Celery sends its request's context: it has the task's id, not always its name
        # (`task_name` raised AttributeError here, and nothing was recorded).
        name = str(getattr(sender, "name", None) or getattr(request, "task", None) or "?")
        if expired and getattr(sender, "stale_dropped", False):  # a stale periodic tick
            logger.info("{} {} expired before it ran: dropped, the next one runs", name, request.id)
            return
        if expired:  # dead-lettered (service.worker.request): a failure, as the letter says
            write(
                outcomes.task_failed,
                request.id,
                name,
                state="FAILURE",
                error_type="Expired",
                message=f"the message expired at {getattr(request, 'expires', None)} before "
                "the task ran",
            )
            return
        write(
            outcomes.task_failed,
            request.id,
            name,
            state="REVOKED",
            error_type="Revoked",
            message="the task was revoked",
        )

    signals.task_prerun.connect(on_prerun, weak=False)
    signals.task_postrun.connect(on_postrun, weak=False)
    signals.task_success.connect(on_success, weak=False)
    signals.task_failure.connect(on_failure, weak=False)
    signals.task_revoked.connect(on_revoked, weak=False)
