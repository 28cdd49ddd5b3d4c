"""Traces of the worker, when service.telemetry exports them: Celery's instrumentation in each
pool process (a span per task run, a child of the trace its message's `traceparent` carries, and
a `traceparent` on each retry it publishes), and a span per step of the document task — load,
extract (detect, decode, read, normalise: the pipeline's own steps), chunk, index.

The steps are not `with` blocks of ours: the document task says when each begins (through its
progress tracker) and the pipeline wraps its own in service.pipeline.steps. Step spans are made
children of the run span explicitly, never attached as the current context, so that nothing here
has to unwind in step with Celery's instrumentation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from celery import Celery, signals

from service import telemetry
from service.pipeline import steps

_run: Any = None
"""The span of the task run in progress in this process, when a step began."""
_open: list[Any] = []
"""The step spans open now, outermost first."""


def _tracer() -> Any:
    from opentelemetry import trace

    return trace.get_tracer(telemetry.TRACER)


def _start(name: str, parent: Any) -> Any:
    from opentelemetry import trace

    span = _tracer().start_span(name, context=trace.set_span_in_context(parent))
    span.set_attribute("docproc.step", name)
    _open.append(span)
    return span


def _end_steps(depth: int = 0) -> None:
    while len(_open) > depth:
        _open.pop().end()


def _failed(span: Any, exc: BaseException) -> None:
    from opentelemetry import trace

    span.record_exception(exc)
    span.set_status(trace.Status(trace.StatusCode.ERROR, str(exc)))


def step_begins(step: str) -> None:
    """A step of the document task begins: the one before it ends."""
    global _run  # noqa: PLW0603 -- one task at a time in a pool process
    if not telemetry.active():
        return
    from opentelemetry import trace

    if not _open:
        _run = trace.get_current_span()
    _end_steps()
    _start(step, _run)


@contextlib.contextmanager
def _pipeline_step(name: str) -> Iterator[Any]:
    """A span for a step of the pipeline, inside the task's step that runs it."""
    from opentelemetry import trace

    depth = len(_open)
    span = _start(name, _open[-1] if _open else trace.get_current_span())
    try:
        yield span
    except BaseException as exc:
        _failed(span, exc)
        raise
    finally:
        _end_steps(depth)


def connect(app: Celery) -> None:
    """Trace `app`'s pool processes when the environment asks for it (service.telemetry)."""

    def on_process_init(**_: Any) -> None:
        if not telemetry.setup("worker"):
            return
        from opentelemetry.instrumentation.celery import CeleryInstrumentor

        CeleryInstrumentor().instrument()  # type: ignore[no-untyped-call]
        steps.watch(_pipeline_step)

    def on_postrun(task: Any = None, retval: Any = None, state: str = "", **_: Any) -> None:
        # Connected before Celery's instrumentation: the steps end before the run does.
        if getattr(task, "app", None) is not app or not _open:
            return
        if state != "SUCCESS" and isinstance(retval, BaseException):
            _failed(_open[-1], getattr(retval, "exc", None) or retval)  # a Retry: its cause
        _end_steps()

    def on_process_shutdown(**_: Any) -> None:
        telemetry.flush()

    signals.worker_process_init.connect(on_process_init, weak=False)
    signals.task_postrun.connect(on_postrun, weak=False)
    signals.worker_process_shutdown.connect(on_process_shutdown, weak=False)
