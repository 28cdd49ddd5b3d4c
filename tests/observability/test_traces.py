"""Traces: one trace follows a document from the HTTP request through the publish, the task and
its steps, each retry through the delay queues, and its dead letter's storage; a re-publish is
a trace of its own, linked to the first. API, worker and DLQ consumer are real processes
exporting OTLP/HTTP to a receiver this test runs (tests/observability/otlp.py)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from celery import Celery

from service import telemetry
from service.api.app import create_app
from service.settings import Settings
from service.store.database import Store
from service.task_contract import CANARY_SUCCEED, PROCESS_DOCUMENT
from tests.deployment import clear_index_failure, inject_index_failure
from tests.observability.conftest import Stack, running_stack
from tests.observability.otlp import Receiver, Span, Trace
from tests.support import RabbitMQ, RecordingPublisher, eventually

pytestmark = [pytest.mark.rabbitmq, pytest.mark.worker]

RUN = f"run/{PROCESS_DOCUMENT}"
RETRY_PUBLISH = f"apply_async/{PROCESS_DOCUMENT}"
STEPS = ("load", "extract", "chunk", "index")


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def traced(
    rabbitmq: RabbitMQ, receiver: Receiver, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # milliseconds: spans arrive while the test waits
    }
    async with running_stack(rabbitmq, Path(tmp_path_factory.mktemp("traced")), **env) as stack:
        yield stack


async def trace_of(receiver: Receiver, task_id: str, *names: str, timeout: float = 30) -> Trace:
    """The trace whose task run has `task_id`, once it holds spans named `names`."""

    async def probe() -> Trace | None:
        spans = receiver.snapshot()
        runs = [s for s in spans if s.attributes.get("messaging.message.id") == task_id]
        if not runs:
            return None
        found = Trace([s for s in spans if s.trace_id == runs[0].trace_id])
        return found if all(found.named(name) for name in names) else None

    return await eventually(probe, timeout, f"the trace of task {task_id} with {names}")


async def test_a_stock_celery_clients_traceparent_is_the_runs_parent(
    traced: Stack, receiver: Receiver
) -> None:
    trace_id, span_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    client = Celery(broker=traced.vhost.url)
    try:
        sent = client.send_task(
            CANARY_SUCCEED,
            exchange="docproc",
            routing_key="document_processing",
            declare=[],
            headers={"traceparent": f"00-{trace_id}-{span_id}-01"},
        )
    finally:
        client.close()

    async def run() -> Span | None:
        return next(
            (s for s in receiver.snapshot() if s.attributes.get("messaging.message.id") == sent.id),
            None,
        )

    span = await eventually(run, 30, "the canary's run span")
    assert (span.name, span.trace_id, span.parent_id) == (
        f"run/{CANARY_SUCCEED}",
        trace_id,
        span_id,
    )


def test_nothing_is_set_up_without_the_otel_variables() -> None:
    assert not telemetry.enabled({})
    assert not telemetry.enabled(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_SDK_DISABLED": "true"}
    )
    assert not telemetry.enabled({"OTEL_SERVICE_NAME": "docproc"})
    assert telemetry.enabled({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://x/v1/traces"})
    assert not telemetry.setup("test", {})
    assert not telemetry.active()
    # The API then has no tracing plugin, so no tracing middleware.
    app = create_app(Settings(), publisher=RecordingPublisher())
    assert not [plugin for plugin in app.plugins if "OpenTelemetry" in type(plugin).__name__]


async def test_one_trace_follows_a_document_from_the_request_to_its_index(
    traced: Stack, receiver: Receiver
) -> None:
    task_id = await traced.upload(b"A lighthouse keeper's log.\n\nAll quiet.\n", "log.txt")
    await traced.state(task_id, "SUCCESS")

    trace = await trace_of(receiver, task_id, RUN, "index", "POST /documents")
    run = trace.one(RUN)

    assert run.service == "docproc-worker"
    publish = trace.parent(run)
    assert publish.service == "docproc-api"
    assert "document_processing" in publish.name  # aio-pika's producer span
    assert "POST /documents" in trace.ancestors(publish)
    for step in STEPS:
        assert trace.parent(trace.one(step)) == run, str(trace)
    assert trace.ancestors(trace.one("detect"))[:2] == ["extract", RUN]
    assert trace.parent(trace.one("decode")).name == "detect"
    assert trace.parent(trace.one("read")).name == "extract"
    assert trace.parent(trace.one("normalise")).name == "extract"
    # SQLAlchemy's instrumentation: the worker's statements, in the run.
    statements = [
        s for s in trace.spans if s.service == "docproc-worker" and "db.system" in str(s.attributes)
    ]
    assert statements, str(trace)
    assert all(RUN in trace.ancestors(statement) for statement in statements)


async def test_each_retry_is_a_run_in_the_same_trace(traced: Stack, receiver: Receiver) -> None:
    store = Store(traced.vhost.env()["DOCPROC_DATABASE_URL"])
    inject_index_failure(store, "retried")
    try:
        task_id = await traced.upload(b"Indexed at the second try.\n", "retried-1.txt")
        await traced.state(task_id, "RETRY")
    finally:
        clear_index_failure(store, "retried")
        store.close()
    await traced.state(task_id, "SUCCESS")

    trace = await trace_of(receiver, task_id, RETRY_PUBLISH)

    async def two_runs() -> list[Span] | None:
        runs = Trace([s for s in receiver.snapshot() if s.trace_id == trace.spans[0].trace_id])
        return runs.named(RUN) if len(runs.named(RUN)) >= 2 else None

    await eventually(two_runs, 30, "the second run")
    trace = await trace_of(receiver, task_id, RETRY_PUBLISH)
    first, *later = trace.named(RUN)
    assert "injected: the index is unavailable" in first.attributes["celery.retry.reason"]
    failed_index, index = trace.named("index")
    assert failed_index.error  # the step that failed
    assert not index.error
    retry_publish = trace.parent(later[0])
    assert retry_publish.name == RETRY_PUBLISH
    assert trace.parent(retry_publish) == first, str(trace)
    assert not later[-1].error


async def test_a_dead_letter_is_stored_in_its_document_trace_and_a_republish_links_to_it(
    traced: Stack, receiver: Receiver
) -> None:
    task_id = await traced.upload(b"%PDF-1.4\n1 0 obj broken beyond repair\n", "broken.pdf")
    await traced.state(task_id, "DEAD")

    trace = await trace_of(receiver, task_id, RUN, "dead letter stored")
    run, stored = trace.one(RUN), trace.one("dead letter stored")
    assert run.error
    assert stored.service == "docproc-dlq"
    # The dead message is the API's: its storage hangs off the publish that sent it.
    assert trace.parent(stored) == trace.parent(run)

    async with httpx.AsyncClient(base_url=traced.api.url, timeout=10) as http:
        letters = (await http.get("/dead-letters", params={"task": PROCESS_DOCUMENT})).json()
        [letter] = [item for item in letters["items"] if item["task_id"] == task_id]
        answer = await http.post(f"/dead-letters/{letter['id']}/republish")
    assert answer.status_code == 200, answer.text

    async def republished() -> Trace | None:
        spans = receiver.snapshot()
        marks = [s for s in spans if s.name == "dead letter re-published"]
        if not marks:
            return None
        again = Trace([s for s in spans if s.trace_id == marks[0].trace_id])
        # The request's own span ends (and is exported) after its answer: wait for it too.
        request = [s for s in again.spans if not s.parent_id and "republish" in s.name]
        return again if again.named(RUN) and request else None

    again = await eventually(republished, 30, "the re-published task's run")
    mark = again.one("dead letter re-published")
    assert again.spans[0].trace_id != trace.spans[0].trace_id
    assert mark.links == (trace.spans[0].trace_id,)  # back to the document's first trace
    assert mark.service == "docproc-api"
    assert "republish" in again.ancestors(mark)[0], str(again)  # the operator's request
    rerun = again.one(RUN)
    assert again.ancestors(rerun)[1] == "dead letter re-published", str(again)
