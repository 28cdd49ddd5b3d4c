"""OpenTelemetry traces, when the standard variables ask for them, and nothing otherwise.

`setup(component)` is called by each entry point (API, worker pool process, DLQ consumer, beat).
With `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) set — and neither
`OTEL_SDK_DISABLED=true` nor `OTEL_TRACES_EXPORTER=none` — it installs the SDK with an OTLP/HTTP
exporter (every `OTEL_*` variable of the SDK and exporter applies: headers, sampler, batch
delays, resource attributes) and the maintained instrumentations of aio-pika and SQLAlchemy;
the caller adds its own (Celery in the worker, Litestar's middleware in the API). Without them,
nothing of OpenTelemetry is even imported: no middleware, no hook, no cost.

The trace context travels in message headers as W3C `traceparent`: aio-pika's instrumentation
writes it on every publish of the API and the DLQ consumer and reads it on consume; Celery's on
every task message the worker and beat send, and reads it from each task a worker runs — also
from messages a stock Celery client sends, instrumented or not.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

TRACER = "docproc"
_active = False


def enabled(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the environment asks for traces to be exported."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def active() -> bool:
    """Whether this process exports traces (`setup` installed the SDK)."""
    return _active


def setup(component: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Export this process's traces when the environment asks for it; True when it does.

    The service is `OTEL_SERVICE_NAME`, else `docproc-<component>` (docproc-api, docproc-worker,
    docproc-dlq, docproc-beat). Call it once per process, before its engines and connections
    are made (a worker's pool process: after the fork).
    """
    global _active  # noqa: PLW0603 -- one tracer provider per process
    if _active or not enabled(environ):
        return _active
    try:
        import opentelemetry.sdk  # noqa: F401
    except ImportError:
        from loguru import logger

        logger.warning(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set, but OpenTelemetry's SDK is not installed: no "
            "traces are exported. Install docproc's otel extra (uv run --extra otel …, or pip "
            "install 'docproc[otel]')"
        )
        return False
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.aio_pika import AioPikaInstrumentor
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    attributes: dict[str, Any] = {"docproc.component": component}
    if not environ.get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = f"docproc-{component}"
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    AioPikaInstrumentor().instrument()
    # Its declared range ends below SQLAlchemy 2.1 (which docproc runs), though the engine
    # events it listens to are unchanged there: tests/observability checks its spans arrive.
    SQLAlchemyInstrumentor().instrument(skip_dep_check=True)
    _active = True
    return True


def flush(timeout_millis: int = 5000) -> None:
    """Export what is pending (a process about to exit without running atexit hooks)."""
    if not _active:
        return
    from opentelemetry import trace

    provider: Any = trace.get_tracer_provider()
    provider.force_flush(timeout_millis)


@contextlib.contextmanager
def linked_span(headers: Callable[[], Mapping[str, Any]], name: str) -> Iterator[Any]:
    """A span of the current trace, linked to the trace a message's `traceparent` carries (its
    `headers()`, read only when traces are on): a re-publish belongs to the operator's request,
    and points back at the document's first trace. Nothing when traces are off."""
    if not _active:
        yield None
        return
    from opentelemetry import propagate, trace

    carried = propagate.extract({k: v for k, v in headers().items() if isinstance(v, str)})
    origin = trace.get_current_span(carried).get_span_context()
    links = [trace.Link(origin)] if origin.is_valid else None
    with trace.get_tracer(TRACER).start_as_current_span(name, links=links) as span:
        yield span


def message_spans(
    name: str, started_ns: int, messages: list[tuple[Mapping[str, Any], dict[str, Any]]]
) -> None:
    """One span per message, from `started_ns` to now, each in the trace its headers carry
    (the DLQ consumer's batch: each dead letter's storage in its document's trace)."""
    if not _active:
        return
    from opentelemetry import propagate, trace

    tracer = trace.get_tracer(TRACER)
    for headers, attributes in messages:
        carried = propagate.extract({k: v for k, v in headers.items() if isinstance(v, str)})
        span = tracer.start_span(name, context=carried, start_time=started_ns)
        span.set_attributes(attributes)
        span.end()
