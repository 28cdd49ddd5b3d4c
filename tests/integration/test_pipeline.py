"""Documents through a real worker and DLQ consumer on a real broker, on both stores: they end
searchable, or dead with their reason, and their task state tells where they are."""

from __future__ import annotations

import itertools
import os
import signal
from datetime import datetime
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import text

from service.api.app import create_app
from service.search_syntax import Query, parse
from service.store import documents, search, task_runs
from service.store.task_runs import TaskRun
from service.worker import canary
from tests import corpus
from tests.deployment import Deployment, clear_index_failure, inject_index_failure
from tests.support import (
    eventually,
)

pytestmark = [pytest.mark.rabbitmq, pytest.mark.worker]


def as_phrase(words: str) -> Query:
    return parse('"' + words.replace('"', " ") + '"')


async def test_a_corpus_of_every_format_ends_searchable_without_markup(
    deployment: Deployment,
) -> None:
    samples = {
        name: sample
        for name, sample in corpus.all_samples().items()
        if name
        in (
            "pdf_sample",
            "docx_sample",
            "html_sample",
            "utf16_text_sample",
            "cp1252_text_sample",
            "markdown_sample",
        )
    }
    assert len(samples) == 6, sorted(corpus.all_samples())
    submitted = {
        name: deployment.submit(sample.data, sample.filename) for name, sample in samples.items()
    }

    for name, (document_id, task_id) in submitted.items():
        run = await deployment.finished(task_id)
        assert run.state == "SUCCESS", (name, run.error_type, run.error_message)
        document = deployment.store.run(documents.get, document_id)
        assert document is not None
        assert document.detected_type == samples[name].detected_type
        assert document.chunk_count
    for name, sample in samples.items():
        document_id = submitted[name][0]
        for phrase in sample.present:
            hits = deployment.store.run(search.search, as_phrase(phrase), 50).hits
            assert document_id in {hit.document_id for hit in hits}, (name, phrase)
        stored_text = deployment.store.run(documents.get_text, document_id) or ""
        for phrase in sample.absent:
            assert phrase not in stored_text, (name, phrase)
            if phrase.endswith("_SHOULD_NOT_APPEAR"):  # script, style, ... text is not indexed
                hits = deployment.store.run(
                    search.search, as_phrase(phrase.replace("_", " ")), 50
                ).hits
                assert document_id not in {hit.document_id for hit in hits}, (name, phrase)


@pytest.mark.parametrize(
    ("sample", "error_type"),
    [
        (corpus.corrupt_pdf_sample, "CorruptFile"),
        (corpus.unsupported_binary_sample, "UnsupportedType"),
    ],
)
async def test_a_document_that_cannot_be_processed_is_dead_at_once(
    deployment: Deployment, sample: Any, error_type: str
) -> None:
    built = sample()
    _, task_id = deployment.submit(built.data, built.filename)

    run = await deployment.finished(task_id)

    assert run.state == "DEAD"
    assert run.error_type == error_type
    assert run.retries == 0
    assert run.retry_history == []


async def test_a_transient_index_failure_retries_with_growing_delays_and_then_succeeds(
    deployment: Deployment,
) -> None:
    inject_index_failure(deployment.store, "flaky")
    try:
        _, task_id = deployment.submit(b"A lighthouse stands on the rocks.", "flaky-note.txt")

        async def retried_twice() -> TaskRun | None:
            run = deployment.store.run(task_runs.get, task_id)
            return run if run is not None and run.retries >= 2 else None

        await eventually(retried_twice, 30, "two retries")
    finally:
        clear_index_failure(deployment.store, "flaky")

    run = await deployment.finished(task_id)

    assert run.state == "SUCCESS"
    delays = [entry.delay for entry in run.retry_history]
    assert len(delays) >= 2
    assert delays == sorted(delays), "backoff never shrinks"
    assert all(entry.error_type == "DatabaseError" for entry in run.retry_history)
    times = [entry.at for entry in run.retry_history]
    assert all(b > a for a, b in itertools.pairwise(times))


async def test_a_transient_failure_that_never_clears_is_dead_after_exactly_max_retries(
    deployment: Deployment,
) -> None:
    inject_index_failure(deployment.store, "broken")
    try:
        _, task_id = deployment.submit(b"The index will never take this one.", "broken-note.txt")
        run = await deployment.finished(task_id, timeout=90)
    finally:
        clear_index_failure(deployment.store, "broken")

    assert run.state == "DEAD"
    assert run.retries == 3
    assert [entry.delay for entry in run.retry_history] == sorted(
        e.delay for e in run.retry_history
    )
    assert len(run.retry_history) == 3
    assert run.error_type == "DatabaseError"
    assert "injected" in (run.error_message or "")


async def test_a_worker_process_killed_mid_document_leaves_exactly_one_set_of_chunks(
    deployment: Deployment,
) -> None:
    big = corpus.scanned_pdf_sample(pages=6)
    document_id, task_id = deployment.submit(big.data, "big.pdf")

    async def processing() -> bool | None:
        # Its first step is recorded as it begins; OCR of a 6-page scan then takes seconds.
        run = deployment.store.run(task_runs.get, task_id)
        return True if run is not None and run.state == "PROCESSING" else None

    await eventually(processing, 30, "the processing to start", interval=0.02)
    for pid in deployment.worker.children():
        os.kill(pid, signal.SIGKILL)

    run = await deployment.finished(task_id, timeout=120)

    assert run.state == "SUCCESS"
    document = deployment.store.run(documents.get, document_id)
    assert document is not None
    positions = deployment.store.run(
        lambda c: [
            row[0]
            for row in c.execute(
                text("SELECT position FROM chunks WHERE document_id = :d ORDER BY position"),
                {"d": document_id},
            )
        ]
    )
    assert positions == list(range(document.chunk_count or 0))
    assert positions, "the document has chunks"


async def test_progress_is_seen_rising_in_processing_before_success(deployment: Deployment) -> None:
    result = deployment.client.send_task(canary.STEPS, kwargs={"count": 4, "seconds": 0.4})
    seen: list[tuple[str, float]] = []

    async def done() -> bool | None:
        run = deployment.store.run(task_runs.get, result.id)
        if run is not None and (not seen or seen[-1] != (run.state, run.percent)):
            seen.append((run.state, run.percent))
        return True if run is not None and run.state == "SUCCESS" else None

    await eventually(done, 30, "the steps canary", interval=0.05)

    processing = [percent for state, percent in seen if state == "PROCESSING"]
    assert processing == sorted(processing)
    assert len(set(processing)) >= 3
    assert seen[-1] == ("SUCCESS", 100.0)


async def test_through_the_api_a_document_goes_pending_processing_success_and_is_found(
    deployment: Deployment,
) -> None:
    big = corpus.scanned_pdf_sample(pages=2)
    async with AsyncTestClient(create_app(deployment.vhost.settings())) as client:
        response = await client.post(
            "/documents", files={"file": ("report.pdf", big.data, "application/pdf")}
        )
        assert response.status_code == 202
        task_id = response.json()["task_id"]
        states: list[str] = [response.json()["status"]]  # as committed before the 202

        async def success() -> bool | None:
            state = (await client.get(f"/tasks/{task_id}/status")).json()["state"]
            if not states or states[-1] != state:
                states.append(state)
            return True if state in ("SUCCESS", "DEAD") else None

        await eventually(success, 60, "the upload to be processed", interval=0.02)
        hits = (await client.get("/search", params={"q": big.present[0]})).json()["items"]
        detail = (await client.get(f"/tasks/{task_id}")).json()

    assert states[0] == "PENDING"
    assert "PROCESSING" in states
    assert states[-1] == "SUCCESS"
    assert response.json()["document_id"] in {hit["document_id"] for hit in hits}
    steps = detail["progress"]["step_times"]
    assert [step["step"] for step in steps] == ["load", "extract", "chunk", "index"]
    assert [step["started_at"] for step in steps] == sorted(step["started_at"] for step in steps)
    # The load's transaction records STARTED: the extract step begins after it, the last step
    # before SUCCESS.
    timings = detail["timings"]
    assert steps[0]["started_at"] <= timings["started_at"] <= steps[1]["started_at"]
    assert steps[-1]["started_at"] <= timings["finished_at"]
    first, finished = (
        datetime.fromisoformat(steps[0]["started_at"]),
        datetime.fromisoformat(timings["finished_at"]),
    )
    assert sum(step["seconds"] for step in steps) <= (finished - first).total_seconds() + 0.01
    assert steps[1]["seconds"] > 0, "OCR of 2 pages takes time"
