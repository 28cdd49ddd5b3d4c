"""The worker's store watch: a store the worker cannot use stops it, where an outage pauses it."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from celery.worker import state as worker_state

from service.store.database import Store
from service.topology import WORK_QUEUES
from service.worker.store_watch import StoreWatch
from tests.store.test_migration_safety import at_a_newer_revision


class Consumer:
    """What the watch uses of Celery's consumer: its app, the work queues it consumes, its
    timer (the call the consumer's loop would make every second, kept to be made by hand)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.task_consumer = SimpleNamespace(queues=[SimpleNamespace(name=n) for n in WORK_QUEUES])
        self.timer = SimpleNamespace(call_repeatedly=self._every)
        self.ticks: list[Callable[[], None]] = []

    def _every(self, _interval: float, fn: Callable[..., None], args: tuple[Any, ...]) -> None:
        self.ticks.append(lambda: fn(*args))

    def cancel_task_queue(self, name: str) -> None:
        self.task_consumer.queues = [q for q in self.task_consumer.queues if q.name != name]

    def add_task_queue(self, name: str) -> None:
        self.task_consumer.queues.append(SimpleNamespace(name=name))

    @property
    def consuming(self) -> list[str]:
        return [queue.name for queue in self.task_consumer.queues]


def _until(condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {what}"
        time.sleep(0.02)


def test_a_store_newer_than_the_worker_stops_it_and_it_takes_no_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store did not answer when the worker started (it was not migrated); when it does, it
    is at a revision this docproc does not know. Before, the watch's thread died of Alembic's
    CommandError and the worker went on taking tasks."""
    url = f"sqlite:///{tmp_path / 'docproc.db'}"
    at_a_newer_revision(url)
    monkeypatch.setattr(worker_state, "should_stop", None)
    store = Store(url)
    consumer = Consumer(SimpleNamespace(migrated=False, store=store))
    watch = StoreWatch(consumer)
    try:
        watch.start(consumer)
        _until(lambda: worker_state.should_stop is not None, "the watch to stop the worker")
        for tick in consumer.ticks:
            tick()
    finally:
        watch.stop(consumer)
        store.close()

    assert worker_state.should_stop == 78  # a warm shutdown, exit status EX_CONFIG
    assert consumer.consuming == []
    assert "newer than this docproc" in watch.reason


def test_a_worker_whose_store_did_not_answer_at_start_consumes_nothing_until_it_does(
    tmp_path: Path,
) -> None:
    """Before, the watch took the store for available until its first look said otherwise, and
    the consumer's loop took tasks meanwhile."""
    away = Store("postgresql://docproc@127.0.0.1:1/docproc")  # nothing listens on port 1
    app = SimpleNamespace(migrated=False, store=away)
    consumer = Consumer(app)
    watch = StoreWatch(consumer)
    try:
        watch.start(consumer)
        assert consumer.consuming == [], "consuming before the store answered"

        app.store = Store(f"sqlite:///{tmp_path / 'docproc.db'}")  # the store answers
        _until(lambda: watch.available, "the watch to see the store answer")
        for tick in consumer.ticks:
            tick()
    finally:
        watch.stop(consumer)
        if watch._thread is not None:  # its look ends before its store is closed
            watch._thread.join(10)
        away.close()
        app.store.close()

    assert sorted(consumer.consuming) == sorted(WORK_QUEUES)
    assert app.migrated
