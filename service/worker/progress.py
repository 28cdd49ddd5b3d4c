"""Progress of a running task, written to the store step by step (state PROCESSING)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from loguru import logger

from service.errors import DatabaseError
from service.store import task_runs
from service.store.database import Store
from service.worker import metrics, tracing


class ProgressTracker:
    """Names a task's steps up front, and records them as they begin: step, done/total, percent.

    The first step is always recorded (the run is PROCESSING) — here, or with the run's start
    when `first_recorded`; later ones only when at least `min_interval` seconds passed since the
    last write, so that a document done in milliseconds does not pay a transaction per step,
    while a slow one shows its progress as it goes.
    """

    def __init__(
        self,
        store: Store,
        task_id: str,
        steps: Sequence[str],
        min_interval: float = 0.25,
        *,
        first_recorded: bool = False,
    ) -> None:
        self._store = store
        self._task_id = task_id
        self.steps = tuple(steps)
        self.done = 0
        self.min_interval = min_interval
        self._written: float | None = time.monotonic() if first_recorded else None
        self._began: list[tuple[str, float]] = []
        self._origin = (datetime.now(UTC), time.monotonic())

    def step_times(self) -> list[task_runs.StepTime]:
        """Each step begun so far, when it began and how long it took (the last one: until now)."""
        wall, origin = self._origin
        ends = [at for _, at in self._began[1:]] + [time.monotonic()]
        return [
            task_runs.StepTime(
                step=step,
                started_at=wall + timedelta(seconds=at - origin),
                seconds=round(end - at, 6),
            )
            for (step, at), end in zip(self._began, ends, strict=True)
        ]

    def page(self, number: int, total: int | None) -> None:
        """Note that the step under way reads page `number` (of `total`), as `extract: page 3 of
        12`, written at most every `min_interval` seconds like the steps."""
        now = time.monotonic()
        if not self._began or (
            self._written is not None and now - self._written < self.min_interval
        ):
            return
        self._written = now
        step = self._began[-1][0]
        self._record(f"{step}: page {number:,}" + (f" of {total:,}" if total else ""))

    def _record(self, step: str) -> None:
        try:
            # One UPDATE: a round trip on PostgreSQL, not four.
            self._store.run_alone(
                task_runs.record_progress,
                self._task_id,
                step=step,
                steps_done=self.done,
                steps_total=len(self.steps),
            )
        except DatabaseError as exc:
            # Progress is for watching; the work itself must not fail for it.
            logger.warning("cannot record progress of step {}: {}", step, exc)

    def begin(self, step: str) -> None:
        """Note that `step` begins; every step before it is done."""
        self.done = self.steps.index(step)
        metrics.step_begins(self._task_id, step)
        tracing.step_begins(step)
        now = time.monotonic()
        self._began.append((step, now))
        if self._written is not None and now - self._written < self.min_interval:
            return
        self._written = now
        self._record(step)
