"""Dead letters as an operator uses them, with a real worker, DLQ consumer and API: re-publish a
dead task once its cause is fixed, see one that fails again come back, redrive hundreds at a rate
with progress and cancel, and find failures grouped by cause."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio
from litestar import Litestar
from litestar.testing import AsyncTestClient

from service.api.app import create_app
from service.deadletters.consumer import store_batch
from service.deadletters.parsing import RawMessage
from service.store import task_runs
from service.store.task_runs import TaskRun
from service.task_contract import CANARY_SUCCEED, PROCESS_DOCUMENT
from tests import corpus
from tests.deployment import Deployment, clear_index_failure, inject_index_failure
from tests.support import eventually

pytestmark = [pytest.mark.rabbitmq, pytest.mark.worker]

Client = AsyncTestClient[Litestar]


@pytest_asyncio.fixture(loop_scope="session")
async def api(deployment: Deployment) -> AsyncIterator[Client]:
    async with AsyncTestClient(create_app(deployment.vhost.settings())) as client:
        yield client


async def dead_letters_of(api: Client, task_id: str) -> list[dict[str, Any]]:
    response = await api.get("/dead-letters", params={"task_id": task_id, "status": "all"})
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def wait_dead_again(
    deployment: Deployment, api: Client, task_id: str, count: int
) -> list[dict[str, Any]]:
    async def stored() -> list[dict[str, Any]] | None:
        found = await dead_letters_of(api, task_id)
        return found if len(found) >= count else None

    return await eventually(stored, 90, f"{count} dead letters of task {task_id}")


async def test_a_dead_task_whose_retries_went_through_the_delay_queues_succeeds_once_fixed(
    deployment: Deployment, api: Client
) -> None:
    inject_index_failure(deployment.store, "fixme")
    try:
        document_id, task_id = deployment.submit(b"A keeper fixed the lamp at dawn.", "fixme-1.txt")
        run = await deployment.finished(task_id, timeout=90)
        assert run.state == "DEAD"
        assert run.retries == 3, "its retries travelled through retry_queue and the delay queues"
        [letter] = await wait_dead_again(deployment, api, task_id, 1)
        assert letter["queue"] == "retry_queue"
    finally:
        clear_index_failure(deployment.store, "fixme")  # the cause, fixed

    republished = await api.post(f"/dead-letters/{letter['id']}/republish")
    assert republished.status_code == 200
    run = await deployment.finished(task_id, timeout=60)

    assert run.state == "SUCCESS"
    record = (await api.get(f"/dead-letters/{letter['id']}")).json()
    assert record["republish_count"] == 1
    hits = (await api.get("/search", params={"q": "keeper lamp dawn"})).json()["items"]
    assert document_id in {hit["document_id"] for hit in hits}


async def test_a_republished_task_that_dies_again_through_the_delay_queues_comes_back(
    deployment: Deployment, api: Client
) -> None:
    inject_index_failure(deployment.store, "hopeless")
    try:
        _, task_id = deployment.submit(b"This one keeps failing.", "hopeless-1.txt")
        [first] = await wait_dead_again(deployment, api, task_id, 1)

        await api.post(f"/dead-letters/{first['id']}/republish")
        found = await wait_dead_again(deployment, api, task_id, 2)
    finally:
        clear_index_failure(deployment.store, "hopeless")

    second = next(item for item in found if item["id"] != first["id"])
    assert second["republished_from"] == first["id"]
    assert second["reason"] == "rejected"
    assert second["retries"] == 3, "the retry budget was reset, then spent again"
    detail = (await api.get(f"/dead-letters/{second['id']}")).json()
    assert detail["headers"]["x-docproc-republish-count"] == 1
    assert (await api.get(f"/dead-letters/{first['id']}")).json()["republish_count"] == 1
    run = deployment.store.run(task_runs.get, task_id)
    assert run is not None
    assert run.state == "DEAD"


async def test_a_permanent_failure_republished_fails_again_and_is_back_with_its_count(
    deployment: Deployment, api: Client
) -> None:
    sample = corpus.corrupt_pdf_sample()
    _, task_id = deployment.submit(sample.data, sample.filename)
    [first] = await wait_dead_again(deployment, api, task_id, 1)
    assert first["error_type"] == "CorruptFile"

    retried = await api.post(f"/tasks/{task_id}/retry")
    assert retried.status_code == 202
    found = await wait_dead_again(deployment, api, task_id, 2)

    second = next(item for item in found if item["id"] != first["id"])
    assert second["republished_from"] == first["id"]
    assert second["error_type"] == "CorruptFile"
    assert second["retries"] == 0


async def test_an_expired_task_is_dead_with_its_expiry_and_runs_once_republished(
    deployment: Deployment, api: Client
) -> None:
    """Celery acked a message past its `expires` unrun, and the run stayed as it was."""
    task_id = str(uuid.uuid4())
    deployment.store.run(task_runs.record_pending, task_id, CANARY_SUCCEED)
    deployment.client.send_task(
        CANARY_SUCCEED, task_id=task_id, expires=datetime.now(UTC) - timedelta(seconds=1)
    )
    [letter] = await wait_dead_again(deployment, api, task_id, 1)
    assert letter["error_type"] == "Expired"
    run = await deployment.finished(task_id)
    assert (run.state, run.error_type) == ("DEAD", "Expired")
    assert run.error_message is not None
    assert "expired at" in run.error_message

    republished = await api.post(f"/dead-letters/{letter['id']}/republish")
    assert republished.status_code == 200, republished.text
    assert (await deployment.finished(task_id)).state == "SUCCESS", "it ran, on the same worker"


def seed(deployment: Deployment, count: int, queue: str = "celery") -> list[str]:
    """Dead letters as the DLQ consumer stores them, without waiting for so many to die."""
    messages = [
        RawMessage(
            body=b"[[], {}, {}]",
            headers={
                "task": "docproc.canary.succeed",
                "id": f"seeded-{uuid.uuid4()}",
                "retries": 0,
                "x-death": [
                    {"count": 1, "reason": "rejected", "queue": queue, "exchange": "docproc"}
                ],
            },
            properties={"content_type": "application/json", "content_encoding": "utf-8"},
        )
        for _ in range(count)
    ]
    return [record_id for record_id, _ in deployment.store.run(store_batch, messages)]


async def test_redriving_500_at_100_per_second_is_held_to_its_rate_with_progress(
    deployment: Deployment, api: Client
) -> None:
    since = datetime.now(UTC).isoformat()  # this test's letters only
    seeded = seed(deployment, 500)
    group = (await api.get(f"/dead-letters/{seeded[0]}")).json()["group"]
    started = time.monotonic()

    job = (
        await api.post("/dead-letters/redrive", json={"group": group, "since": since, "rate": 100})
    ).json()
    progress: list[int] = []

    async def finished() -> dict[str, Any] | None:
        state = (await api.get(f"/dead-letters/redrives/{job['id']}")).json()
        if state["state"] == "running" and (not progress or progress[-1] != state["published"]):
            progress.append(state["published"])
        return state if state["state"] == "finished" else None

    final = await eventually(finished, 30, "the redrive to finish", interval=0.2)
    took = time.monotonic() - started

    assert job["matched"] == 500
    assert final["published"] == 500
    assert final["failed"] == 0
    # The rate is a ceiling (never faster); how much slower a loaded machine is, is bench/'s.
    assert took >= 4.5, f"500 at 100/s took {took:.1f} s"
    assert len(progress) >= 5, f"progress seen while it ran: {progress}"
    assert progress == sorted(progress)


async def test_a_cancelled_redrive_leaves_the_rest_untouched(
    deployment: Deployment, api: Client
) -> None:
    since = datetime.now(UTC).isoformat()  # this test's letters only
    seeded = seed(deployment, 500)
    group = (await api.get(f"/dead-letters/{seeded[0]}")).json()["group"]
    job = (
        await api.post("/dead-letters/redrive", json={"group": group, "since": since, "rate": 100})
    ).json()

    async def underway() -> bool | None:
        state = (await api.get(f"/dead-letters/redrives/{job['id']}")).json()
        return True if state["published"] >= 100 else None

    await eventually(underway, 10, "a hundred re-published")
    cancelled = (await api.delete(f"/dead-letters/redrives/{job['id']}")).json()

    async def stopped() -> dict[str, Any] | None:
        state = (await api.get(f"/dead-letters/redrives/{job['id']}")).json()
        return state if state["state"] == "cancelled" else None

    final = await eventually(stopped, 5, "the runner to stop the redrive")
    active = (
        await api.get("/dead-letters", params={"group": group, "since": since, "limit": 500})
    ).json()["items"]

    assert cancelled["state"] in ("cancelling", "cancelled")
    assert 100 <= final["published"] < 500
    assert len(active) == 500 - final["published"], "the rest stays dead and untouched"
    assert all(item["republish_count"] == 0 for item in active)


async def test_three_hundred_failures_from_three_causes_form_three_groups(
    deployment: Deployment, api: Client
) -> None:
    # x-death times have whole seconds.
    since = datetime.now(UTC).replace(microsecond=0).isoformat()
    task_ids = []
    for n in range(100):
        task_ids.append(
            str(
                deployment.client.send_task(
                    PROCESS_DOCUMENT, kwargs={"document_id": str(uuid.uuid4())}
                ).id
            )
        )
        task_ids.append(deployment.submit(corpus.corrupt_pdf_sample().data, f"broken-{n}.pdf")[1])
        task_ids.append(deployment.submit(b"GIF89a" + uuid.uuid4().bytes * 8, f"image-{n}.gif")[1])

    async def all_dead() -> bool | None:
        runs: list[TaskRun | None] = [deployment.store.run(task_runs.get, t) for t in task_ids]
        return True if all(r is not None and r.state == "DEAD" for r in runs) else None

    await eventually(all_dead, 180, "300 failures to be stored", interval=0.5)
    groups = (
        await api.get("/dead-letters/groups", params={"task": PROCESS_DOCUMENT, "since": since})
    ).json()["items"]

    mine = [
        g
        for g in groups
        if g["error_type"] in ("DocumentNotFound", "CorruptFile", "UnsupportedType")
    ]
    assert sorted((g["error_type"], g["count"]) for g in mine) == [
        ("CorruptFile", 100),
        ("DocumentNotFound", 100),
        ("UnsupportedType", 100),
    ]


async def test_an_api_restart_neither_loses_nor_doubles_a_redrive(deployment: Deployment) -> None:
    since = datetime.now(UTC).isoformat()  # this test's letters only
    seeded = seed(deployment, 150)
    settings = deployment.vhost.settings()
    async with AsyncTestClient(create_app(settings)) as before:
        group = (await before.get(f"/dead-letters/{seeded[0]}")).json()["group"]
        job = (
            await before.post(
                "/dead-letters/redrive", json={"group": group, "since": since, "rate": 50}
            )
        ).json()

        async def underway() -> bool | None:
            state = (await before.get(f"/dead-letters/redrives/{job['id']}")).json()
            return True if state["published"] >= 30 else None

        await eventually(underway, 10, "the redrive to be under way")
    # The API is gone, mid-redrive; a new one takes the job over where it stood.
    async with AsyncTestClient(create_app(settings)) as after:
        stopped_at = (await after.get(f"/dead-letters/redrives/{job['id']}")).json()["published"]

        async def finished() -> dict[str, Any] | None:
            state = (await after.get(f"/dead-letters/redrives/{job['id']}")).json()
            return state if state["state"] == "finished" else None

        final = await eventually(finished, 30, "the redrive to finish after the restart")
        letters = [(await after.get(f"/dead-letters/{i}")).json() for i in seeded]

    assert 30 <= stopped_at < 150
    assert (final["published"], final["failed"]) == (150, 0)
    assert [letter["republish_count"] for letter in letters] == [1] * 150, "none lost, none twice"
