"""Canary tasks: known behaviours that prove a deployment's paths, used by `docproc selftest`.

Each reports what it did to the queue named by `report_to` (on the default exchange), so that the
caller can watch without a result backend: a success, a transient failure that retries through the
broker's delayed delivery, a permanent failure that is dead-lettered, a crash of the worker process
that ends at the delivery limit, and a sleep that runs into a time limit.
"""

from __future__ import annotations

import os
import time
from typing import Any

import amqp.exceptions
from celery import Celery, Task
from celery.exceptions import SoftTimeLimitExceeded
from kombu import Queue
from loguru import logger

from service.errors import ProcessingError, TransientProcessingError
from service.task_contract import (
    CANARY_CRASH,
    CANARY_FAIL,
    CANARY_FLAKY,
    CANARY_SLEEP,
    CANARY_STEPS,
    CANARY_SUCCEED,
)
from service.topology import RETRY_QUEUE
from service.worker.docproc_celery import app_of
from service.worker.progress import ProgressTracker

AnyTask = Task[Any, Any]

SUCCEED = CANARY_SUCCEED
FAIL = CANARY_FAIL
FLAKY = CANARY_FLAKY
CRASH = CANARY_CRASH
SLEEP = CANARY_SLEEP
STEPS = CANARY_STEPS


class CanaryFailure(ProcessingError):
    """The permanent failure that the `fail` canary raises on purpose."""


def bounded(name: str, value: Any, low: float, high: float) -> float:
    """A canary's argument within what a selftest needs: anyone who can publish to the work
    queues can call a canary, and `steps(count=2e7)` once took 1.6 GB."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ProcessingError(f"canary argument {name}={value!r:.40} is not within {low}..{high}")
    return value


def report(task: AnyTask, report_to: str | None, event: str, **fields: Any) -> None:
    """Log `event`, and publish it with the task's delivery facts to the queue `report_to`."""
    logger.info("canary {}: {}", task.name, event)
    if not report_to:
        return
    request = task.request
    delivery = request.delivery_info or {}
    body = {
        "event": event,
        "task": task.name,
        "task_id": request.id,
        "retries": request.retries,
        "routing_key": delivery.get("routing_key"),
        "redelivered": bool(delivery.get("redelivered")),
        # Which queues the message expired from on its way here: the broker's delay cascade.
        "delayed_through": [death.get("queue") for death in request.get("x-death") or []],
        "pid": os.getpid(),
        "time": time.time(),
        **fields,
    }
    with task.app.producer_or_acquire() as producer:
        producer.publish(
            body, exchange="", routing_key=report_to, serializer="json", retry=True, declare=[]
        )


def _queue_exists(app: Celery, name: str) -> bool:
    with app.connection_for_write() as connection:
        try:
            Queue(name, channel=connection.default_channel).queue_declare(passive=True)
        except amqp.exceptions.NotFound:
            return False
        except amqp.exceptions.ResourceLocked:
            return True  # exclusive to the selftest's connection: it exists
    return True


def register(app: Celery) -> None:
    @app.task(name=SUCCEED, bind=True, shared=False)
    def succeed(self: AnyTask, report_to: str | None = None) -> str:
        report(self, report_to, "succeeded")
        return "ok"

    @app.task(name=FAIL, bind=True, shared=False)
    def fail(self: AnyTask, report_to: str | None = None) -> None:
        report(self, report_to, "failing")
        raise CanaryFailure("canary: a permanent failure, on purpose")

    @app.task(name=FLAKY, bind=True, shared=False)
    def flaky(
        self: AnyTask, failures: int, report_to: str | None = None, delay: int | None = None
    ) -> str:
        """Fail transiently `failures` times, then succeed. Retries follow the retry policy, or
        wait `delay` seconds (selftest's short path): through retry_queue and the broker anyway.
        """
        bounded("failures", failures, 0, 10)
        if delay is not None:
            bounded("delay", delay, 1, 60)
        if self.request.retries < failures:
            report(self, report_to, "retrying")
            failure = TransientProcessingError(
                f"canary: transient failure {self.request.retries + 1} of {failures}, on purpose"
            )
            if delay is not None:
                raise self.retry(
                    exc=failure, countdown=delay, queue=RETRY_QUEUE, max_retries=failures
                )
            raise failure
        report(self, report_to, "succeeded")
        return "ok"

    @app.task(name=CRASH, bind=True, shared=False)
    def crash(self: AnyTask, report_to: str | None = None) -> str:
        """Kill this worker process, while the selftest that sent it still listens: one cut short
        leaves a canary that would otherwise crash a worker at each delivery up to the limit."""
        if not report_to or not _queue_exists(self.app, report_to):
            logger.warning("canary {}: no selftest listens (report_to), not crashing", self.name)
            return "abandoned"
        report(self, report_to, "crashing")
        os._exit(70)

    @app.task(name=SLEEP, bind=True, shared=False)
    def sleep(
        self: AnyTask, seconds: float, stubborn: bool = False, report_to: str | None = None
    ) -> str:
        """Sleep; a `stubborn` sleeper ignores the soft time limit, as stuck native code would."""
        bounded("seconds", seconds, 0, 600)
        report(self, report_to, "sleeping")
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                time.sleep(left)
            except SoftTimeLimitExceeded:
                if not stubborn:
                    raise
                report(self, report_to, "ignoring the soft time limit")
        report(self, report_to, "succeeded")
        return "ok"

    @app.task(name=STEPS, bind=True, shared=False)
    def steps(self: AnyTask, count: int = 4, seconds: float = 0.5) -> str:
        """Walk through `count` named steps, recording progress as the document task does."""
        bounded("count", count, 1, 100)
        bounded("seconds", seconds, 0, 10)
        names = [f"step {n}" for n in range(1, count + 1)]
        tracker = ProgressTracker(app_of(self).store, str(self.request.id), names)
        for name in names:
            tracker.begin(name)
            time.sleep(seconds)
        return "ok"
