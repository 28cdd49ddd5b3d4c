"""The dead-letter workflow through the API: list, filter, page, inspect, group, republish,
redrive with progress and cancel, discard — against real dead messages on a real broker."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
import httpx
import pytest

from service.api.app import create_app
from service.deadletters.consumer import store_batch
from service.deadletters.parsing import RawMessage
from service.settings import Settings
from service.store import dead_letters, task_runs
from service.store.database import Store
from service.store.schema import utcnow
from tests.api.conftest import Client, queued, take
from tests.support import eventually, served_by_uvicorn

pytestmark = pytest.mark.rabbitmq


def dead_message(
    *,
    queue: str = "document_processing",
    reason: str = "rejected",
    task: str | None = "docproc.document.process",
    task_id: str | None = None,
    error: str | None = None,
    died: datetime | None = None,
    expires: str | None = None,
) -> RawMessage:
    """A message as the DLQ consumer reads it after RabbitMQ dead-lettered it."""
    died = died or datetime.now(UTC)
    headers: dict[str, Any] = {
        "x-death": [
            {
                "count": 1,
                "reason": reason,
                "queue": queue,
                "time": died,
                "exchange": "docproc",
                "routing-keys": [queue],
            }
        ],
        "x-first-death-reason": reason,
        "x-first-death-queue": queue,
        "x-first-death-exchange": "docproc",
    }
    if task is not None:
        task_id = task_id or str(uuid.uuid4())
        headers |= {"lang": "py", "task": task, "id": task_id, "root_id": task_id, "retries": 3}
        headers["expires"] = expires
    body = b'[[], {"document_id": "d-1"}, {"callbacks": null}]'
    return RawMessage(
        body=body,
        headers=headers,
        properties={
            "content_type": "application/json",
            "content_encoding": "utf-8",
            "delivery_mode": 2,
            "message_id": str(uuid.uuid4()),
        },
        routing_key=queue,
    )


def bury(store: Store, *messages: RawMessage, error: tuple[str, str] | None = None) -> list[str]:
    if error is not None:
        for message in messages:
            task_id = str(message.headers["id"])
            store.run(
                task_runs.record_started,
                task_runs.Start(
                    task_id=task_id,
                    task_name="docproc.document.process",
                    retries=3,
                    queue="document_processing",
                    worker="w",
                    correlation_id="c",
                ),
            )
            store.run(
                task_runs.record_failure,
                task_id,
                "docproc.document.process",
                state="FAILURE",
                error_type=error[0],
                message=error[1],
                traceback='Traceback:\n  File "/srv/app/pipeline/pdf.py", line 12, in read\n',
            )
    return [record_id for record_id, _ in store.run(store_batch, list(messages))]


def put_in_doubt(store: Store, dead_letter_id: str) -> None:
    """Taken for a re-publishing never recorded, as a redrive or request leaves a letter whose
    publisher stopped (or lost the confirm) between its publish and its record."""
    letter = store.run(dead_letters.get, dead_letter_id)
    assert letter is not None
    assert store.run(dead_letters.claim, dead_letter_id, letter.updated_at, utcnow())


async def test_listing_filters_and_pages_newest_first(client: Client, store: Store) -> None:
    now = datetime.now(UTC)
    old = bury(store, *(dead_message(died=now - timedelta(hours=2)) for _ in range(3)))
    new = bury(
        store,
        *(dead_message(queue="retry_queue", died=now - timedelta(minutes=i)) for i in range(4)),
    )
    bury(store, dead_message(task=None, queue="celery", reason="expired"))

    first = (await client.get("/dead-letters", params={"limit": 3})).json()
    second = (
        await client.get("/dead-letters", params={"limit": 3, "cursor": first["next_cursor"]})
    ).json()
    third = (
        await client.get("/dead-letters", params={"limit": 3, "cursor": second["next_cursor"]})
    ).json()
    retry_only = (await client.get("/dead-letters", params={"queue": "retry_queue"})).json()
    older = (
        await client.get("/dead-letters", params={"until": (now - timedelta(hours=1)).isoformat()})
    ).json()
    expired = (await client.get("/dead-letters", params={"reason": "expired"})).json()
    bad_cursor = await client.get("/dead-letters", params={"cursor": "nonsense"})

    pages = first["items"] + second["items"] + third["items"]
    assert len(pages) == 8
    assert third["next_cursor"] is None
    assert [item["dead_at"] for item in pages] == sorted(
        (item["dead_at"] for item in pages), reverse=True
    )
    assert {item["id"] for item in retry_only["items"]} == set(new)
    assert {item["id"] for item in older["items"]} == set(old)
    [not_celery] = expired["items"]
    assert not_celery["task"] is None
    assert not_celery["error_type"] == "NotACeleryMessage"
    assert bad_cursor.status_code == 400
    assert bad_cursor.headers["content-type"] == "application/problem+json"


async def test_one_dead_letter_shows_its_raw_message_and_failure(
    client: Client, store: Store
) -> None:
    [record_id] = bury(
        store, dead_message(), error=("CorruptFile", "not a valid PDF: EOF marker not found")
    )

    detail = (await client.get(f"/dead-letters/{record_id}")).json()
    missing = await client.get("/dead-letters/no-such-id")

    assert detail["reason"] == "rejected"
    assert detail["queue"] == "document_processing"
    assert detail["error_type"] == "CorruptFile"
    assert "pdf.py" in detail["traceback"]
    assert detail["kwargs"] == {"document_id": "d-1"}
    assert detail["headers"]["x-death"][0]["queue"] == "document_processing"
    assert detail["body_text"].startswith("[[]")
    assert detail["properties"]["content_type"] == "application/json"
    assert missing.status_code == 404


async def test_groups_fold_varying_ids_into_one_cause_each(client: Client, store: Store) -> None:
    for n in range(6):
        bury(
            store,
            dead_message(),
            error=("CorruptFile", f"page {n} of /data/{uuid.uuid4()}.pdf is damaged"),
        )
    for _ in range(4):
        bury(store, dead_message(), error=("UnsupportedType", "a PNG image is not a document"))

    groups = (await client.get("/dead-letters/groups")).json()["items"]

    assert [(g["error_type"], g["count"]) for g in groups] == [
        ("CorruptFile", 6),
        ("UnsupportedType", 4),
    ]
    by_group = (await client.get("/dead-letters", params={"group": groups[1]["group"]})).json()
    assert len(by_group["items"]) == 4
    discarded = await client.delete(f"/dead-letters/groups/{groups[1]['group']}")
    assert discarded.json() == {"discarded": 4, "in_doubt": 0}
    assert len((await client.get("/dead-letters/groups")).json()["items"]) == 1


async def test_republish_sends_the_message_back_clean_and_marks_the_record(
    client: Client, store: Store, channel: aio_pika.abc.AbstractChannel
) -> None:
    stale = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    waited = dead_message(queue="retry_queue", expires=stale)
    # The state of the attempts before: a failure still to record once made the worker fail the
    # re-published task again without running it.
    attempts = {
        "x-docproc-failure-pending": True,
        "x-docproc-store-waits": 2,
        "x-docproc-error-type": "SearchError",
        "x-docproc-error-message": "index down",
    }
    waited.headers.update(attempts)
    [record_id] = bury(store, waited, error=("SearchError", "index down"))

    response = await client.post(f"/dead-letters/{record_id}/republish")

    assert response.status_code == 200
    assert response.json()["republish_count"] == 1
    message = await take(channel, "retry_queue")
    assert message.body == b'[[], {"document_id": "d-1"}, {"callbacks": null}]'
    assert not {"x-death", "x-first-death-reason", "x-first-death-queue"} & set(message.headers)
    assert not set(attempts) & set(message.headers)
    assert message.headers["retries"] == 0
    assert message.headers["expires"] is None
    assert message.headers["x-docproc-republished-from"] == record_id
    assert message.headers["x-docproc-republish-count"] == 1
    record = (await client.get(f"/dead-letters/{record_id}")).json()
    assert record["republish_count"] == 1
    assert record["republished_at"] is not None
    status = (await client.get(f"/tasks/{record['task_id']}/status")).json()
    assert status["state"] == "PENDING"
    active = (await client.get("/dead-letters")).json()["items"]
    assert record_id not in {item["id"] for item in active}
    republished = (await client.get("/dead-letters", params={"status": "republished"})).json()
    assert record_id in {item["id"] for item in republished["items"]}


async def test_a_letter_naming_another_user_goes_out_without_it_and_the_channel_stays(
    client: Client, store: Store, channel: aio_pika.abc.AbstractChannel
) -> None:
    """A message's `user_id` is checked by RabbitMQ against the user publishing it: one naming
    another user closed the API's channel (406 PRECONDITION_FAILED), failing every publish in
    flight on it — uploads' too — and the letter itself could never go out."""
    foreign = dead_message(queue="retry_queue")
    foreign.properties["user_id"] = "someone-else"
    first, second = bury(store, foreign, dead_message(queue="retry_queue"))

    answers = [await client.post(f"/dead-letters/{each}/republish") for each in (first, second)]

    assert [answer.status_code for answer in answers] == [200, 200], answers[0].text
    arrived = [await take(channel, "retry_queue") for _ in range(2)]
    assert [message.headers["x-docproc-republished-from"] for message in arrived] == [
        first,
        second,
    ]
    assert arrived[0].user_id is None
    detail = (await client.get(f"/dead-letters/{first}")).json()
    assert detail["properties"]["user_id"] == "someone-else", "the record keeps it"


async def test_requests_to_republish_one_letter_at_once_publish_it_once(
    settings_for: Callable[..., Settings], store: Store, channel: aio_pika.abc.AbstractChannel
) -> None:
    """A double click, a client's retry, two operators: each request read the letter before any
    marked it, so each passed the "already re-published" check, and each published it. Now the
    first to claim it publishes; the others are told why not."""
    [record_id] = bury(store, dead_message(queue="retry_queue"), error=("SearchError", "down"))

    with served_by_uvicorn(create_app(settings_for())) as port:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            answers = await asyncio.gather(
                *(client.post(f"/dead-letters/{record_id}/republish") for _ in range(5))
            )
            record = (await client.get(f"/dead-letters/{record_id}")).json()

    assert sorted(answer.status_code for answer in answers) == [200, 409, 409, 409, 409]
    said = {  # each read it before the first claimed it, after, or after it was marked
        "changed while this request read it",
        "it is being re-published",
        "re-published once already",
    }
    for answer in answers:
        if answer.status_code == 409:
            assert any(why in answer.json()["detail"] for why in said), answer.text
    await take(channel, "retry_queue")
    assert await queued(channel, "retry_queue") == 0
    assert record["republish_count"] == 1


async def test_a_letters_byte_arrays_and_floats_go_out_again_and_what_cannot_is_a_409(
    client: Client, store: Store, channel: aio_pika.abc.AbstractChannel
) -> None:
    """A byte array in a header came back from the store as bytes, which the AMQP library does
    not write: re-publishing it was a 500. It goes out as the byte array it was. A float went out
    as a 32-bit float (0.1 came back 0.10000000149011612, 1e-50 as 0.0, 1e300 not at all); it
    goes out as the double it came as. A header that cannot be written again (an integer beyond
    64 bits, signed) is a 409 saying so."""
    carrying = dead_message(queue="retry_queue")
    carrying.headers["x-signature"] = bytearray(b"\x00\xffsig")
    floats = {"x-tenth": 0.1, "x-tiny": 1e-50, "x-far": 1e300, "x-within": [{"x-third": 1 / 3}]}
    carrying.headers.update(floats)
    [record_id] = bury(store, carrying)
    response = await client.post(f"/dead-letters/{record_id}/republish")
    assert response.status_code == 200, response.text
    message = await take(channel, "retry_queue")
    assert message.headers["x-signature"] == b"\x00\xffsig"
    assert {name: message.headers[name] for name in floats} == floats

    nested = dead_message(queue="retry_queue")
    nested.headers["x-far"] = 2**64 - 1  # AMQP's integers are signed
    [record_id] = bury(store, nested)
    response = await client.post(f"/dead-letters/{record_id}/republish")
    assert response.status_code == 409, response.text
    assert "cannot be written as AMQP again" in response.json()["detail"]
    assert await queued(channel, "retry_queue") == 0


async def test_discard_and_republish_errors(client: Client, store: Store) -> None:
    [record_id] = bury(store, dead_message())

    gone = await client.delete(f"/dead-letters/{record_id}")
    again = await client.post(f"/dead-letters/{record_id}/republish")
    unknown = await client.delete("/dead-letters/no-such-id")
    unknown_republish = await client.post("/dead-letters/no-such-id/republish")

    assert gone.status_code == 204
    assert again.status_code == 409
    assert (unknown.status_code, unknown_republish.status_code) == (404, 404)


async def test_a_redrive_runs_at_its_rate_reports_progress_and_can_be_cancelled(
    client: Client, store: Store, channel: aio_pika.abc.AbstractChannel
) -> None:
    bury(store, *(dead_message(queue="celery", task="docproc.maintenance.x") for _ in range(40)))
    bury(store, *(dead_message(queue="retry_queue") for _ in range(3)))

    started = await client.post("/dead-letters/redrive", json={"queue": "celery", "rate": 20})

    assert started.status_code == 202
    location = started.headers["location"]
    assert started.json()["matched"] == 40

    async def some_published() -> dict[str, Any] | None:
        job = (await client.get(location)).json()
        return job if job["published"] >= 10 else None

    progress = await eventually(some_published, 10, "the redrive to make progress")
    assert progress["state"] == "running"
    cancelled = (await client.delete(location)).json()
    assert cancelled["state"] in ("cancelling", "cancelled")

    async def stopped() -> dict[str, Any] | None:
        job = (await client.get(location)).json()
        return job if job["state"] == "cancelled" else None

    final = await eventually(stopped, 5, "the runner to stop the redrive")
    assert final["published"] < 40, "the cancel stopped it"
    remaining = (await client.get("/dead-letters", params={"queue": "celery", "limit": 100})).json()
    assert len(remaining["items"]) == 40 - final["published"]
    jobs = (await client.get("/dead-letters/redrives")).json()["items"]
    assert jobs[0]["id"] == final["id"]


async def test_a_redrive_request_is_validated(client: Client) -> None:
    unknown_field = await client.post("/dead-letters/redrive", json={"queue": "x", "colour": "red"})
    zero_rate = await client.post("/dead-letters/redrive", json={"rate": 0})
    # A job runs to its end before its API process takes the next: at 1e-300 a second it held
    # every later redrive for ever.
    crawling = await client.post("/dead-letters/redrive", json={"all": True, "rate": 1e-300})
    unknown_job = await client.get("/dead-letters/redrives/no-such-id")

    assert unknown_field.status_code == 400
    assert zero_rate.status_code == 400
    assert crawling.status_code == 400
    assert "0.1" in crawling.text, "the problem says the least rate"
    assert unknown_job.status_code == 404
