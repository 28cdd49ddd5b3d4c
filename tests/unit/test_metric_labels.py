"""Metric labels take their values from a known, bounded set: what a message says of itself
(a failure's type in its headers, a dead letter's reason and queue) never becomes a new series."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from billiard.exceptions import WorkerLostError
from celery import Celery, signals
from celery.exceptions import Retry, TimeLimitExceeded
from prometheus_client import Counter

from service import figures
from service.errors import CorruptFile, StoreUnavailable, TransientProcessingError
from service.store.dead_letters import REASONS
from service.topology import DEAD_LETTER_QUEUE, WORK_QUEUES
from service.worker import metrics
from service.worker.base_task import UnrecordedFailure
from service.worker.canary import CanaryFailure
from service.worker.document_task import SoftTimeLimit

FORGED = [f"Forged{n}-{'x' * n}" for n in range(5)]


class _Task:
    """What the signals' handlers read of a task: its app and name."""

    def __init__(self, app: Celery, name: str) -> None:
        self.app = app
        self.name = name


@pytest.fixture
def work(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[metrics.WorkMetrics, _Task]]:
    """The work's metrics, counting a fake task of a Celery app of their own."""
    work = metrics.WorkMetrics()
    monkeypatch.setattr(metrics, "_work", work)
    app = Celery("test_metric_labels")
    metrics.connect(app)
    yield work, _Task(app, "docproc.canary.succeed")
    app.close()


def series(counter: Counter) -> dict[str, float]:
    """The `_total` samples of a task/error_type counter, by error_type."""
    return {
        sample.labels["error_type"]: sample.value
        for family in counter.collect()
        for sample in family.samples
        if sample.name.endswith("_total")
    }


def test_a_failure_of_a_type_its_headers_forged_is_counted_as_other(
    work: tuple[metrics.WorkMetrics, _Task],
) -> None:
    work_metrics, task = work

    for name in FORGED:
        signals.task_failure.send(sender=task, exception=UnrecordedFailure(name, "forged"))
    signals.task_failure.send(sender=task, exception=UnrecordedFailure("CorruptFile", "real"))

    assert series(work_metrics.failures) == {"other": len(FORGED), "CorruptFile": 1}


def test_a_retry_of_a_type_its_headers_forged_is_counted_as_other(
    work: tuple[metrics.WorkMetrics, _Task],
) -> None:
    work_metrics, task = work

    for name in FORGED:
        signals.task_retry.send(sender=task, reason=Retry(exc=UnrecordedFailure(name, "forged")))
    signals.task_retry.send(sender=task, reason=Retry(exc=StoreUnavailable("away")))
    signals.task_retry.send(sender=task, reason=Retry())

    assert series(work_metrics.retries) == {
        "other": len(FORGED),
        "StoreUnavailable": 1,
        "Retry": 1,
    }


@pytest.mark.parametrize(
    ("failure", "label"),
    [
        (CorruptFile("bad"), "CorruptFile"),
        (TransientProcessingError("flaky"), "TransientProcessingError"),
        (CanaryFailure("on purpose"), "CanaryFailure"),
        (SoftTimeLimit("slow"), "SoftTimeLimitExceeded"),
        (TimeLimitExceeded(30), "TimeLimitExceeded"),
        (WorkerLostError("killed"), "WorkerLostError"),
        (UnrecordedFailure("StoreRejected", "too long"), "StoreRejected"),
        (UnrecordedFailure("x" * 10_000, "forged"), "other"),
        (UnrecordedFailure("KeyError", "a bug, met while the store was away"), "KeyError"),
        (UnrecordedFailure("NoSuchModuleError", "a library's"), "other"),
        (KeyError("a bug"), "KeyError"),
    ],
)
def test_a_label_is_a_type_docproc_knows_or_other(failure: BaseException, label: str) -> None:
    assert metrics.error_label(failure) == label


def test_dead_letters_of_forged_reasons_and_queues_add_up_under_other() -> None:
    stored = [
        ("rejected", "document_processing", 2),
        ("delivery_limit", "retry_queue", 1),
        ("unknown", "unknown", 1),
        *((f"reason-{n}", "document_processing", 1) for n in range(3)),
        *(("rejected", f"queue-{n}", 1) for n in range(3)),
        *((f"reason-{n}", f"queue-{n}", 1) for n in range(3)),
    ]

    assert sorted(figures.dead_letter_series(stored)) == [
        ("delivery_limit", "retry_queue", 1),
        ("other", "document_processing", 3),
        ("other", "other", 3),
        ("rejected", "document_processing", 2),
        ("rejected", "other", 3),
        ("unknown", "unknown", 1),
    ]


def test_dead_letter_labels_are_rabbitmqs_reasons_and_docprocs_queues() -> None:
    stored = [(f"reason-{n}", f"queue-{n}", 1) for n in range(1000)]
    stored += [(reason, queue, 1) for reason in REASONS for queue in WORK_QUEUES]

    found = figures.dead_letter_series(stored)

    assert {reason for reason, _, _ in found} == {*REASONS, "other"}
    assert {queue for _, queue, _ in found} == {*WORK_QUEUES, "other"}
    assert sum(count for _, _, count in found) == len(stored)
    assert DEAD_LETTER_QUEUE in figures.LETTER_QUEUES
