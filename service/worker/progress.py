"""Progress of a running task, written to the store step by step (state PROCESSING)."""

from __future__ import annotations

from collections.abc import Sequence

from loguru import logger

from service.errors import DatabaseError
from service.store import task_runs
from service.store.database import Store


class ProgressTracker:
    """Names a task's steps up front, and records each as it begins: step, done/total, percent."""

    def __init__(self, store: Store, task_id: str, steps: Sequence[str]) -> None:
        self._store = store
        self._task_id = task_id
        self.steps = tuple(steps)
        self.done = 0

    def begin(self, step: str) -> None:
        """Record that `step` begins; every step before it is done."""
        self.done = self.steps.index(step)
        try:
            self._store.run(
                task_runs.record_progress,
                self._task_id,
                step=step,
                steps_done=self.done,
                steps_total=len(self.steps),
            )
        except DatabaseError as exc:
            # Progress is for watching; the work itself must not fail for it.
            logger.warning("cannot record progress of step {}: {}", step, exc)
