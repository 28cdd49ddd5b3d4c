"""The work's own metrics — task and step durations by document type, retries and permanent
failures by cause, bytes extracted — served by each worker on DOCPROC_WORKER_METRICS_PORT.

prometheus_client's multiprocess mode rather than a collector over the store: the figures are
timings and counts of events, which the store does not keep (task runs expire, a retry overwrites
the last), and writing them there would cost a transaction per task. Each pool process writes its
samples to a memory-mapped file of a directory the worker's main process made before forking;
the main process serves their sum, so one scrape of a worker host counts each task once, however
many pool processes ran it. With several worker hosts, Prometheus scrapes each, and queries sum
them (`sum by (...)`).
"""

from __future__ import annotations

import builtins
import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from celery import Celery, signals
from loguru import logger

from service.errors import DocprocError, error_type_of
from service.settings import Settings

SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
OTHER_ERROR = "other"
"""The error_type label of a failure whose type docproc neither defines nor expects."""
CELERY_ERROR_TYPES = frozenset(
    {"SoftTimeLimitExceeded", "TimeLimitExceeded", "WorkerLostError", "Reject", "Retry"}
)
"""Celery's own: the soft limit (service.worker.document_task names it so); in the worker's main
process, the hard limit, a lost pool process, a message rejected; a retry that names no cause."""


def error_types() -> frozenset[str]:
    """The error types a stand-in's label may name: docproc's errors, walked now (a module
    imported since may have added one), Celery's, and Python's own."""
    names = set(CELERY_ERROR_TYPES) | _BUILT_IN_ERRORS
    classes: list[type[DocprocError]] = [DocprocError]
    while classes:
        found = classes.pop()
        names.add(found.__name__)
        classes.extend(found.__subclasses__())
    return frozenset(names)


def error_label(exc: BaseException) -> str:
    """The error_type label of `exc`: its class, of which there are as many as the code has; for
    a stand-in (a failure that waited for the store: the type its message's headers say, which
    anyone who may publish to the vhost writes), that type if docproc knows it, else "other" —
    as a label, each new one was a new series. The store records the type as it was said."""
    name = error_type_of(exc)
    if name == type(exc).__name__ or name in error_types():
        return name
    return OTHER_ERROR


_BUILT_IN_ERRORS = frozenset(
    name
    for name, value in vars(builtins).items()
    if isinstance(value, type) and issubclass(value, BaseException)
)


class WorkMetrics:
    """The metric objects: made after multiprocess mode is switched on, before the pool forks."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Histogram

        # registry=None: the worker serves the multiprocess directory, not a registry.
        self.task_duration = Histogram(
            "docproc_task_duration_seconds",
            "Task run duration, by task, document type and outcome",
            ["task", "document_type", "outcome"],
            buckets=SECONDS,
            registry=None,
        )
        self.step_duration = Histogram(
            "docproc_step_duration_seconds",
            "Duration of a document task's steps (load, extract, chunk, index), by document type",
            ["step", "document_type"],
            buckets=SECONDS,
            registry=None,
        )
        self.retries = Counter(
            "docproc_task_retries",
            "Retries through retry_queue, by task and cause (StoreUnavailable: waits for a store)",
            ["task", "error_type"],
            registry=None,
        )
        self.failures = Counter(
            "docproc_task_failures",
            "Permanent failures (the message is rejected and dead-lettered), by task and cause",
            ["task", "error_type"],
            registry=None,
        )
        self.extracted = Counter(
            "docproc_extracted_bytes",
            "Bytes of documents whose text was extracted, by document type",
            ["document_type"],
            registry=None,
        )


@dataclass
class _Run:
    started: float
    steps: list[tuple[str, float]] = field(default_factory=list)


_work: WorkMetrics | None = None
_runs: dict[str, _Run] = {}


def step_begins(task_id: str, step: str) -> None:
    """A document task's step begins (the one before it, if any, ends)."""
    run = _runs.get(task_id)
    if run is not None:
        run.steps.append((step, time.perf_counter()))


def _finished(work: WorkMetrics, task: str, run: _Run, state: str, retval: Any) -> None:
    ended = time.perf_counter()
    result = retval if isinstance(retval, dict) else {}
    document_type = str(result.get("document_type") or ("unknown" if run.steps else ""))
    work.task_duration.labels(task, document_type, state.lower()).observe(ended - run.started)
    # Each step ends where the next begins; the last one with the task.
    ends = [began for _, began in run.steps[1:]] + [ended] if run.steps else []
    for (step, began), step_ended in zip(run.steps, ends, strict=True):
        work.step_duration.labels(step, document_type).observe(step_ended - began)
    size = result.get("bytes")
    if isinstance(size, int) and size > 0:
        work.extracted.labels(document_type).inc(size)


def connect(app: Celery) -> None:
    """Time and count `app`'s tasks, once the worker has served its metrics (`serve`)."""

    def mine(task: Any) -> bool:
        return _work is not None and getattr(task, "app", None) is app

    def on_prerun(task: Any, task_id: str, **_: Any) -> None:
        if mine(task):
            _runs[task_id] = _Run(time.perf_counter())

    def on_postrun(task: Any, task_id: str, retval: Any = None, state: str = "", **_: Any) -> None:
        run = _runs.pop(task_id, None)
        if run is not None and _work is not None:
            _finished(_work, task.name, run, state or "UNKNOWN", retval)

    def on_retry(sender: Any, reason: Any = None, **_: Any) -> None:
        if mine(sender) and _work is not None:
            cause = getattr(reason, "exc", None) or reason
            name = error_label(cause) if isinstance(cause, BaseException) else "Retry"
            _work.retries.labels(sender.name, name).inc()

    def on_failure(sender: Any, exception: BaseException, **_: Any) -> None:
        if mine(sender) and _work is not None:
            _work.failures.labels(sender.name, error_label(exception)).inc()

    signals.task_prerun.connect(on_prerun, weak=False)
    signals.task_postrun.connect(on_postrun, weak=False)
    signals.task_retry.connect(on_retry, weak=False)
    signals.task_failure.connect(on_failure, weak=False)


def serve(settings: Settings) -> Callable[[], None] | None:
    """In the worker's main process, before the pool forks: switch prometheus_client to
    multiprocess mode in a fresh directory, make the metrics, and serve their sum on
    DOCPROC_API_HOST:DOCPROC_WORKER_METRICS_PORT. Returns what stops it; None when the port is 0.
    A port already taken (another worker on this host) is a warning: the work goes on."""
    global _work  # noqa: PLW0603 -- one set of metrics per worker process tree
    if not settings.worker_metrics_port:
        return None
    directory = tempfile.mkdtemp(prefix="docproc-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    from prometheus_client import CollectorRegistry, start_http_server, values
    from prometheus_client.multiprocess import MultiProcessCollector

    # prometheus_client picks its value class when first imported: pick again, now that the
    # directory is set (a library may have imported it earlier).
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    _work = WorkMetrics()
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    try:
        server, thread = start_http_server(
            settings.worker_metrics_port, addr=settings.api_host, registry=registry
        )
    except OSError as exc:
        logger.warning(
            "work metrics are not served: {}:{} is taken ({}); set DOCPROC_WORKER_METRICS_PORT "
            "to a free port, or 0",
            settings.api_host,
            settings.worker_metrics_port,
            exc.strerror or exc,
        )
        server = None
    else:
        logger.info(
            "work metrics at http://{}:{}/metrics", settings.api_host, settings.worker_metrics_port
        )

    def stop() -> None:
        if server is not None:
            server.shutdown()
            server.server_close()
            thread.join(5)
        with contextlib.suppress(KeyError):
            del os.environ["PROMETHEUS_MULTIPROC_DIR"]
        shutil.rmtree(directory, ignore_errors=True)

    return stop
