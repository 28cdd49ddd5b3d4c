"""Task status and retry, stats, health, readiness, metrics and the OpenAPI document."""

from __future__ import annotations

import aio_pika
import pytest

from service.store import task_runs
from service.store.database import Store
from tests.api.conftest import Client, take
from tests.api.test_dead_letters_api import bury, dead_message
from tests.api.test_documents_api import upload

pytestmark = pytest.mark.rabbitmq


async def test_a_task_that_is_not_finished_cannot_be_retried(client: Client) -> None:
    accepted = (await upload(client)).json()

    pending = await client.post(f"/tasks/{accepted['task_id']}/retry")
    unknown = await client.post("/tasks/no-such-task/retry")
    unknown_status = await client.get("/tasks/no-such-task/status")

    assert pending.status_code == 409
    assert "PENDING" in pending.json()["detail"]
    assert (unknown.status_code, unknown_status.status_code) == (404, 404)


async def test_many_statuses_are_read_at_once_in_the_order_asked(client: Client) -> None:
    first, second = [(await upload(client, f"n-{n}.txt".encode())).json() for n in range(2)]
    ids = [second["task_id"], "no-such-task", first["task_id"], second["task_id"]]

    response = await client.get("/tasks/statuses", params=[("id", each) for each in ids])

    assert response.status_code == 200
    body = response.json()
    assert [s["task_id"] for s in body["statuses"]] == [second["task_id"], first["task_id"]]
    assert {s["state"] for s in body["statuses"]} == {"PENDING"}
    assert body["statuses"][0]["document_id"] == second["document_id"]
    assert body["unknown"] == ["no-such-task"]


@pytest.mark.parametrize(
    "query",
    [
        [],  # no id
        [("id", f"t-{n}") for n in range(101)],  # more than a read takes
        [("id", "bad\x00id")],
    ],
    ids=["none", "too-many", "control-character"],
)
async def test_a_statuses_read_outside_its_bounds_is_a_clear_400(
    client: Client, query: list[tuple[str, str]]
) -> None:
    response = await client.get("/tasks/statuses", params=query)

    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/problem+json")


async def test_retrying_a_dead_task_republishes_its_dead_letter(
    client: Client, store: Store, channel: aio_pika.abc.AbstractChannel
) -> None:
    message = dead_message()
    bury(store, message, error=("SearchError", "index unavailable"))
    task_id = str(message.headers["id"])
    store.run(
        task_runs.record_failure,
        task_id,
        "docproc.document.process",
        state="DEAD",
        error_type=None,
        message=None,
    )

    response = await client.post(f"/tasks/{task_id}/retry")

    assert response.status_code == 202
    assert response.json()["state"] == "PENDING"
    assert response.headers["location"] == f"/tasks/{task_id}/status"
    again = await take(channel, "document_processing")
    assert again.headers["id"] == task_id
    assert again.headers["retries"] == 0


async def test_a_failed_document_task_without_a_dead_letter_is_published_afresh(
    client: Client, store: Store, channel: aio_pika.abc.AbstractChannel
) -> None:
    accepted = (await upload(client)).json()
    await take(channel, "document_processing")
    store.run(
        task_runs.record_failure,
        accepted["task_id"],
        "docproc.document.process",
        state="FAILURE",
        error_type="TimeLimitExceeded",
        message="too slow",
    )

    response = await client.post(f"/tasks/{accepted['task_id']}/retry")

    assert response.status_code == 202
    again = await take(channel, "document_processing")
    assert again.headers["id"] == accepted["task_id"]


async def test_status_shows_progress_retries_error_and_timings(
    client: Client, store: Store
) -> None:
    store.run(
        task_runs.record_started,
        task_runs.Start(
            task_id="t-9",
            task_name="docproc.document.process",
            retries=1,
            queue="retry_queue",
            worker="w@h",
            correlation_id="c-9",
            document_id="d-9",
        ),
    )
    store.run(
        task_runs.record_retry,
        "t-9",
        retries=2,
        delay=4.0,
        error_type="SearchError",
        message="index down",
    )
    store.run(task_runs.record_progress, "t-9", step="index", steps_done=3, steps_total=4)

    status = (await client.get("/tasks/t-9/status")).json()

    assert status["state"] == "PROCESSING"
    assert status["progress"] == {
        "step": "index",
        "steps_done": 3,
        "steps_total": 4,
        "percent": 75.0,
        "step_times": None,  # written with its success
    }
    assert status["retries"] == 2
    assert status["retry_history"][0]["delay"] == 4.0
    assert status["error"] == {"type": "SearchError", "message": "index down", "traceback": None}
    assert status["timings"]["elapsed"] >= 0
    assert status["timings"]["next_retry_at"] is not None
    assert status["correlation_id"] == "c-9"


async def test_stats_count_states_queues_and_dead_letters(client: Client, store: Store) -> None:
    await upload(client)
    bury(
        store,
        dead_message(reason="delivery_limit"),
        dead_message(queue="celery", reason="expired", task=None),
    )

    stats = (await client.get("/tasks/stats")).json()

    assert stats["states"]["PENDING"] >= 1
    assert {q["name"] for q in stats["queues"]} == {
        "document_processing",
        "retry_queue",
        "celery",
        "docproc.dead_letter",
    }
    assert stats["dead_letters"]["by_reason"] == {"delivery_limit": 1, "expired": 1}
    assert stats["dead_letters"]["by_queue"] == {"document_processing": 1, "celery": 1}
    assert stats["dead_letters"]["total"] == 2
    assert stats["last_hour"]["failed"] >= 1
    assert stats["warnings"] == []


async def test_health_ready_metrics_and_the_openapi_document(client: Client, store: Store) -> None:
    bury(store, dead_message(reason="rejected"))

    health = await client.get("/health")
    ready = await client.get("/ready")
    metrics = await client.get("/metrics")
    schema = await client.get("/schema/openapi.json")
    ui = await client.get("/schema")

    assert health.json() == {"status": "ok"}
    assert ready.json() == {"status": "ready", "broker": "ok", "store": "ok"}
    assert metrics.headers["content-type"].startswith("text/plain")
    assert 'docproc_dead_letters{queue="document_processing",reason="rejected"} 1.0' in metrics.text
    assert 'docproc_queue_consumers{queue="document_processing"}' in metrics.text
    assert "docproc_requests_total" in metrics.text
    paths = schema.json()["paths"]
    for path in (
        "/documents",
        "/documents/{document_id}",
        "/documents/{document_id}/text",
        "/search",
        "/tasks/{task_id}/status",
        "/tasks/{task_id}/retry",
        "/tasks/stats",
        "/dead-letters",
        "/dead-letters/{dead_letter_id}",
        "/dead-letters/groups",
        "/dead-letters/{dead_letter_id}/republish",
        "/dead-letters/redrive",
        "/health",
        "/ready",
        "/metrics",
    ):
        assert path in paths, path
    upload_errors = paths["/documents"]["post"]["responses"]
    assert {"400", "413", "415", "422", "503"} <= set(upload_errors)
    assert ui.status_code == 200
    assert "text/html" in ui.headers["content-type"]
