"""While the store is unavailable, the worker takes no new work; it resumes on its own.

A task that meets the outage waits for the store in the broker (worker.task), without spending
its retry budget; new messages stay in their queues instead of being taken only to wait too. A
thread looks at the store (every few seconds, every second while it is down) and the consumer's
timer applies what it found: cancel the work queues' consumers, or consume them again. Their
consumer count (RabbitMQ's UI, /tasks/stats, /metrics) drops to zero meanwhile, and the log says
why.

When the store answers again, tasks that waited for it are still in the broker's delay queues,
for up to STORE_WAIT_MAX, their runs PENDING: before the worker takes work again it holds
reconciliation off until they are back (`leases.STORE_RETURNED`), which else took them for
tasks whose message was lost and published each a second time.

A store this docproc cannot use at all (newer than it, read-only: a ConfigError) is no outage:
waiting would not mend it, so the worker takes no work and stops, as it does at start.
"""

from __future__ import annotations

import socket
import threading
from datetime import timedelta
from typing import Any

from celery import bootsteps
from celery.worker import state as worker_state
from loguru import logger

from service.errors import DatabaseError, DocprocError, exit_status
from service.store import dead_letters, leases
from service.store.schema import utcnow
from service.topology import WORK_QUEUES
from service.worker.base_task import STORE_WAIT_MAX

HEALTHY_INTERVAL = 5.0
DOWN_INTERVAL = 1.0
RETURN_HOLD = timedelta(seconds=STORE_WAIT_MAX + 60)
"""How long reconciliation is held off once the store is back: the longest wait for it, and a
minute for what came back to be started."""


class StoreWatch(bootsteps.StartStopStep):
    """A consumer bootstep: pauses the work queues' consumers while the store is down."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.available = True
        self.reason = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, parent: Any) -> None:
        if self._thread is None and not parent.app.migrated:
            # The store did not answer at start: not taken for available before it is seen to
            # answer, so the worker consumes nothing meanwhile.
            self.available, self.reason = False, "it did not answer at start"
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._look, args=(parent.app,), name="store-watch", daemon=True
            )
            self._thread.start()
        self._apply(parent)  # before the consumer's loop first consumes
        parent.timer.call_repeatedly(DOWN_INTERVAL, self._apply, (parent,))

    def stop(self, parent: Any) -> None:
        self._stop.set()

    def shutdown(self, parent: Any) -> None:
        self._stop.set()

    def _look(self, app: Any) -> None:
        while not self._stop.is_set():
            try:
                if not app.migrated:
                    app.store.migrate()  # the store was down when the worker started
                    app.migrated = True
                app.store.run(dead_letters.probe_writable)
                if not self.available:  # back: hold reconciliation off before taking work
                    app.store.run(
                        leases.hold,
                        leases.STORE_RETURNED,
                        socket.gethostname(),
                        utcnow() + RETURN_HOLD,
                    )
            except DatabaseError as exc:
                self.available, self.reason = False, str(exc)
            except DocprocError as exc:
                # Not an outage: a store this docproc cannot use (newer than it, read-only).
                # Waiting mends nothing: no new work, and the worker stops (warm: what runs
                # ends first) with the exit status of the error, as at start.
                self.available, self.reason = False, str(exc)
                logger.error("{}; the worker stops", exc)
                # Celery's own signal handlers stop the worker so; its stub types the flag None.
                worker_state.should_stop = exit_status(exc)  # type: ignore[assignment]
                return
            else:
                self.available = True
            self._stop.wait(HEALTHY_INTERVAL if self.available else DOWN_INTERVAL)

    def _apply(self, consumer: Any) -> None:
        task_consumer = consumer.task_consumer
        if task_consumer is None:
            return
        consuming = {queue.name for queue in task_consumer.queues}
        if not self.available:
            paused = [name for name in WORK_QUEUES if name in consuming]
            for name in paused:
                consumer.cancel_task_queue(name)
            if paused:
                logger.warning(
                    "the store is unavailable; taking no new work until it answers ({})",
                    self.reason,
                )
            return
        resumed = [name for name in WORK_QUEUES if name not in consuming]
        for name in resumed:
            consumer.add_task_queue(name)
        if resumed:
            logger.info("the store answers again; taking work from {}", ", ".join(resumed))
