"""Operator actions that cannot surprise, and answers that say precisely what happened (HTTP
only: a recording publisher stands for RabbitMQ)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from typing import Any

import aio_pika
import httpx
import msgspec

from service.api.app import create_app
from service.deadletters import redrive
from service.deadletters.redrive import RedriveRunner
from service.errors import BrokerUnavailable, NotSent
from service.settings import Settings
from service.store import dead_letters, redrives, task_runs
from service.store.database import AsyncStore, Store
from service.store.dead_letters import Filters
from service.task_contract import REPUBLISHED_FROM_HEADER
from tests.api.test_dead_letters_api import bury, dead_message
from tests.http.conftest import Client
from tests.support import RecordingPublisher, eventually, served_by_uvicorn

PROBLEM = "application/problem+json"


async def test_a_redrive_needs_a_filter_or_all_and_a_dry_run_publishes_nothing(
    client: Client, store: Store, publisher: RecordingPublisher
) -> None:
    bury(store, *(dead_message(queue="retry_queue") for _ in range(3)))
    bury(store, dead_message(queue="document_processing"))

    nothing = await client.post("/dead-letters/redrive", json={})
    dry = await client.post("/dead-letters/redrive", json={"all": True, "dry_run": True})
    bogus = await client.post("/dead-letters/redrive", json={"reason": "bogus"})

    assert nothing.status_code == 400
    assert nothing.headers["content-type"] == PROBLEM
    assert all(name in nothing.json()["detail"] for name in ("queue", "reason", "group", '"all"'))
    assert dry.status_code == 200
    assert dry.json()["matched"] == 4
    assert {q["name"]: q["count"] for q in dry.json()["queues"]} == {
        "retry_queue": 3,
        "document_processing": 1,
    }
    assert sum(group["count"] for group in dry.json()["groups"]) == 4
    assert publisher.sent == [], "a dry run publishes nothing"
    assert bogus.status_code == 400
    assert "delivery_limit" in bogus.json()["detail"], "the allowed reasons are listed"


async def test_a_redrive_waiting_for_rabbitmq_says_so_and_goes_on_when_it_is_back(
    client: Client, store: Store, publisher: RecordingPublisher
) -> None:
    """A job whose letters cannot go out stays running with them pending; its progress once
    said nothing of why (only the API's log did)."""
    bury(store, *(dead_message(queue="retry_queue") for _ in range(3)))
    publisher.refusal = BrokerUnavailable("RabbitMQ is not answering")
    started = await client.post("/dead-letters/redrive", json={"queue": "retry_queue"})
    location = started.headers["location"]

    async def waiting() -> dict[str, Any] | None:
        job: dict[str, Any] = (await client.get(location)).json()
        return job if job["last_error"] else None

    job = await eventually(waiting, 10, "the job to say what it waits for")
    assert job["last_error"] == "waiting for RabbitMQ: RabbitMQ is not connected"
    assert (job["state"], job["published"], job["failed"]) == ("running", 0, 0)
    assert publisher.sent == []

    publisher.refusal = None

    async def finished() -> dict[str, Any] | None:
        job: dict[str, Any] = (await client.get(location)).json()
        return job if job["state"] == "finished" else None

    job = await eventually(finished, 10, "the job to finish once RabbitMQ is back")
    assert (job["published"], job["failed"]) == (3, 0)
    assert job["last_error"] is None, "it waits no more"
    assert len(publisher.sent) == 3


class RefusingOnce(RecordingPublisher):
    """Connected, yet refuses each message the first time it is given (RabbitMQ's nack, or a
    connection lost as the publish began): the message did not go out."""

    def __init__(self) -> None:
        super().__init__()
        self.refused: set[str] = set()

    async def publish(
        self, message: aio_pika.Message, routing_key: str, *, exchange: str = "docproc"
    ) -> None:
        key = str((message.headers or {}).get(REPUBLISHED_FROM_HEADER))
        if key not in self.refused:
            self.refused.add(key)
            raise NotSent("RabbitMQ refused the message: nack")
        await super().publish(message, routing_key, exchange=exchange)


async def test_a_letter_claimed_and_not_sent_is_sent_by_the_next_pass(
    database_url: str, store: Store
) -> None:
    """A claim stays on a letter that may have gone out (a confirm that never came); one that
    certainly did not once stayed too, and the job's next pass failed the letter for good."""
    bury(store, *(dead_message(queue="retry_queue") for _ in range(3)))
    shared = AsyncStore(database_url)
    publisher = RefusingOnce()
    runner = RedriveRunner(shared, publisher, owner="one")
    stop = asyncio.Event()
    running = asyncio.create_task(runner.run(stop))
    try:
        job = await shared.write(redrives.create, Filters(queue="retry_queue"), 100.0)
        runner.wake.set()

        async def finished() -> redrives.Redrive | None:
            found = await shared.run(redrives.get, job.id)
            return found if found is not None and found.state == "finished" else None

        done = await eventually(finished, 15, "the job to finish")
    finally:
        stop.set()
        await running
        await shared.close()
    assert (done.published, done.failed) == (3, 0)
    assert len(publisher.sent) == 3


class Unconfirmed(RecordingPublisher):
    """Connected, yet no confirm comes (a blocked broker): each publish fails once as many as
    the runner keeps in flight have begun — they may have gone out."""

    def __init__(self, in_flight: int) -> None:
        super().__init__()
        self.tried: list[str] = []
        self.in_flight = in_flight
        self.all_begun = asyncio.Event()

    async def publish(
        self, message: aio_pika.Message, routing_key: str, *, exchange: str = "docproc"
    ) -> None:
        self.tried.append(str((message.headers or {}).get(REPUBLISHED_FROM_HEADER)))
        if len(self.tried) >= self.in_flight:
            self.all_begun.set()
        # Fewer in flight than that: the publishes fail (differently) instead of hanging.
        async with asyncio.timeout(10):
            await self.all_begun.wait()
        raise BrokerUnavailable("RabbitMQ did not confirm within 5 s")


async def test_a_group_whose_confirms_do_not_come_leaves_only_those_in_flight_in_doubt(
    database_url: str, store: Store
) -> None:
    """A group is read, claimed and recorded together; its confirms are awaited MAX_IN_FLIGHT at
    a time. Once a publish fails, the group's letters not yet tried are given back, pending:
    only those in flight stay claimed, failed as letters that may have gone out."""
    ids = bury(
        store, *(dead_message(queue="retry_queue") for _ in range(3 * redrive.MAX_IN_FLIGHT))
    )
    shared = AsyncStore(database_url)
    publisher = Unconfirmed(redrive.MAX_IN_FLIGHT)
    try:
        job = await shared.write(redrives.create, Filters(queue="retry_queue"), 10_000.0)
        await RedriveRunner(shared, publisher, owner="one")._group(job, ids, asyncio.Event())
        found = await shared.run(redrives.get, job.id)
    finally:
        await shared.close()

    assert len(publisher.tried) == redrive.MAX_IN_FLIGHT
    letters = [store.run(dead_letters.get, each) for each in ids]
    claimed = {letter.id for letter in letters if letter and letter.republished_at is not None}
    assert claimed == set(publisher.tried), "only the letters tried stay claimed"
    assert found is not None
    assert (found.published, found.failed) == (0, redrive.MAX_IN_FLIGHT), "the rest pending"
    assert "may have gone out" in str(found.last_error)


async def test_republishing_twice_asks_for_force_and_says_when_it_was_done(
    client: Client, store: Store, publisher: RecordingPublisher
) -> None:
    [record_id] = bury(store, dead_message())

    first = await client.post(f"/dead-letters/{record_id}/republish")
    again = await client.post(f"/dead-letters/{record_id}/republish")
    forced = await client.post(f"/dead-letters/{record_id}/republish", params={"force": "true"})

    assert first.status_code == 200
    assert again.status_code == 409
    assert "re-published once already" in again.json()["detail"]
    assert "force=true" in again.json()["detail"]
    assert forced.status_code == 200
    assert forced.json()["republish_count"] == 2
    assert [sent.routing_key for sent in publisher.sent] == ["document_processing"] * 2
    assert publisher.sent[1].message.headers["x-docproc-republish-count"] == 2


async def test_a_letter_that_killed_workers_or_died_elsewhere_is_not_republished_by_default(
    client: Client, store: Store, publisher: RecordingPublisher
) -> None:
    [killer] = bury(store, dead_message(reason="delivery_limit"))
    [forged] = bury(store, dead_message(queue="celery.pidbox.someone"))

    refused = await client.post(f"/dead-letters/{killer}/republish")
    elsewhere = await client.post(f"/dead-letters/{forged}/republish")
    redrive = await client.post(
        "/dead-letters/redrive", json={"queue": "celery.pidbox.someone", "rate": 100}
    )

    assert refused.status_code == 409
    assert "delivery limit" in refused.json()["detail"]
    assert elsewhere.status_code == 409
    assert "?target=celery.pidbox.someone" in elsewhere.json()["detail"]
    assert redrive.status_code == 202
    job = redrive.headers["location"]

    async def failed_alone() -> dict[str, Any] | None:
        found: dict[str, Any] = (await client.get(job)).json()
        return found if found["state"] == "finished" else None

    finished = await eventually(failed_alone, 10, "the redrive to finish")
    assert (finished["published"], finished["failed"]) == (0, 1)
    assert "not in one of docproc's work queues" in finished["last_error"]
    assert publisher.sent == []


async def test_a_redrive_leaves_out_letters_that_killed_workers_unless_asked_for_them(
    client: Client, store: Store, publisher: RecordingPublisher
) -> None:
    """A redrive by any other filter once re-published them too: each message would kill or
    lose a worker process again, DOCPROC_DELIVERY_LIMIT times, before dying once more."""
    bury(store, *(dead_message(queue="retry_queue") for _ in range(2)))
    killers = bury(store, *(dead_message(queue="retry_queue", reason="delivery_limit"),) * 3)
    [again] = bury(store, dead_message(queue="retry_queue"))
    assert (await client.post(f"/dead-letters/{again}/republish")).status_code == 200
    publisher.sent.clear()

    async def preview(**asked: Any) -> dict[str, Any]:
        body = {"queue": "retry_queue", "dry_run": True} | asked
        answer = await client.post("/dead-letters/redrive", json=body)
        assert answer.status_code == 200, answer.text
        found: dict[str, Any] = answer.json()
        return found

    by_default = await preview()
    assert by_default["matched"] == 2
    assert by_default["left_out"] == [
        {"name": "delivery_limit", "count": 3},
        {"name": "republished", "count": 1},
    ]
    assert {group["reason"] for group in by_default["groups"]} == {"rejected"}
    assert (await preview(include_delivery_limit=True))["matched"] == 5
    named = await preview(reason="delivery_limit")
    assert (named["matched"], named["left_out"]) == (3, [])
    assert (await preview(reason="rejected"))["left_out"] == [{"name": "republished", "count": 1}]

    started = await client.post("/dead-letters/redrive", json={"all": True, "rate": 100})
    location = started.headers["location"]

    async def finished() -> dict[str, Any] | None:
        job: dict[str, Any] = (await client.get(location)).json()
        return job if job["state"] == "finished" else None

    job = await eventually(finished, 10, "the redrive to finish")
    assert (job["matched"], job["published"], job["failed"]) == (2, 2, 0)
    assert len(publisher.sent) == 2
    assert all(store.run(dead_letters.get, killer).republish_count == 0 for killer in killers)


async def test_discarding_twice_is_a_conflict_and_unknown_filters_are_refused(
    client: Client, store: Store
) -> None:
    [record_id] = bury(store, dead_message())

    first = await client.delete(f"/dead-letters/{record_id}")
    second = await client.delete(f"/dead-letters/{record_id}")
    reason = await client.get("/dead-letters", params={"reason": "bogus"})
    status = await client.get("/dead-letters", params={"status": "whatever"})

    assert first.status_code == 204
    assert second.status_code == 409
    assert "discarded already" in second.json()["detail"]
    assert reason.status_code == 400
    assert "rejected" in reason.json()["detail"]
    assert status.status_code == 400
    assert status.headers["content-type"] == PROBLEM


async def test_client_errors_are_400s_that_name_the_field_never_store_outages(
    client: Client,
) -> None:
    cases: dict[str, Any] = {
        "nul in an id": await client.get("/documents/abc%00def"),
        "a long id": await client.get("/tasks/" + "x" * 300 + "/status"),
        "a long filename": await client.post(
            "/documents", files={"file": ("n" * 1100 + ".txt", b"hello", "text/plain")}
        ),
        "a long content type": await client.post(
            "/documents", files={"file": ("a.txt", b"hello", "text/" + "p" * 300)}
        ),
        "two files": await client.post(
            "/documents",
            files=[
                ("file", ("a.txt", b"one", "text/plain")),
                ("file", ("b.txt", b"two", "text/plain")),
            ],
        ),
        "a naive cursor": await client.get(
            "/dead-letters", params={"cursor": "MjAyNi0wMS0wMVQwMDowMDowMHx4"}
        ),
    }

    statuses = {name: response.status_code for name, response in cases.items()}
    assert statuses == dict.fromkeys(cases, 400) | {"a naive cursor": 200}
    assert all(r.headers["content-type"] == PROBLEM for r in cases.values() if r.status_code >= 400)
    assert "one file per upload" in cases["two files"].json()["detail"]


async def test_a_file_name_keeps_its_spaces_and_joiners_and_refuses_controls_and_overrides(
    client: Client,
) -> None:
    """`str.isprintable` refused every space but U+0020 and every joiner: a Mac's "10.00.00\u202fAM"
    in a file name, a no-break space, a Persian name's U+200C were 400s "control characters"."""
    kept = [
        "Notes 2024-01-05 at 10.00.00\u202fAM.txt",
        "Report\u00a02024.txt",
        "\u0646\u0627\u0645\u0647\u200c\u0647\u0627.txt",
    ]
    refused = ["a\u202etxt.exe", "\u2066isolated\u2069.txt", "line\u2028break.txt"]

    accepted = [
        await client.post("/documents", files={"file": (name, name.encode(), "text/plain")})
        for name in kept
    ]
    answers = [
        await client.post("/documents", files={"file": (name, b"hello", "text/plain")})
        for name in refused
    ]

    assert [answer.status_code for answer in accepted] == [202] * len(kept)
    stored = [
        (await client.get(f"/documents/{answer.json()['document_id']}")).json()["filename"]
        for answer in accepted
    ]
    assert stored == kept
    assert [answer.status_code for answer in answers] == [400] * len(refused)
    assert all("control characters" in answer.json()["detail"] for answer in answers)


async def test_every_error_is_a_problem_unknown_paths_and_the_size_limit_included(
    client: Client,
) -> None:
    unknown = await client.get("/no/such/path")
    redoc = await client.get("/schema/redoc")
    swagger = await client.get("/schema/swagger")

    assert (unknown.status_code, redoc.status_code) == (404, 404)
    assert unknown.headers["content-type"] == PROBLEM
    assert redoc.headers["content-type"] == PROBLEM
    assert swagger.status_code == 200
    assert "cdn" not in swagger.text.lower(), "the docs load with no internet"
    assert "/schema/assets/swagger-ui-bundle.js" in swagger.text
    bundle = await client.get("/schema/assets/swagger-ui-bundle.js")
    assert bundle.status_code == 200


async def test_a_task_status_has_no_traceback_and_its_detail_has_one_without_machine_paths(
    client: Client, store: Store
) -> None:
    store.run(task_runs.record_pending, "t-tb", "docproc.document.process")
    store.run(
        task_runs.record_failure,
        "t-tb",
        "docproc.document.process",
        state="FAILURE",
        error_type="CorruptFile",
        message="bad xref",
        traceback="Traceback:\n"
        '  File "/home/x/.venv/lib/python3.11/site-packages/pypdf/_reader.py", line 1\n'
        '  File "/srv/docproc/service/pipeline/pdf.py", line 9\n',
    )

    status = (await client.get("/tasks/t-tb/status")).json()
    detail = (await client.get("/tasks/t-tb")).json()

    assert status["error"] == {"type": "CorruptFile", "message": "bad xref", "traceback": None}
    assert 'File "pypdf/_reader.py"' in detail["error"]["traceback"]
    assert 'File "service/pipeline/pdf.py"' in detail["error"]["traceback"]
    assert "/home/x" not in detail["error"]["traceback"]


async def test_a_big_body_is_previewed_and_downloaded_whole_on_its_own(
    client: Client, store: Store
) -> None:
    body = bytes(range(256)) * 800  # 200 KiB of binary
    message = dead_message()
    [record_id] = bury(store, msgspec.structs.replace(message, body=body))

    detail = (await client.get(f"/dead-letters/{record_id}")).json()
    download = await client.get(f"/dead-letters/{record_id}/body")

    assert detail["body_size"] == len(body)
    assert detail["body_truncated"] is True
    assert len(base64.b64decode(detail["body_base64"])) == 64 * 1024
    assert download.content == body
    assert download.headers["content-type"] == "application/octet-stream"
    assert download.headers["content-disposition"].startswith("attachment;")


class HeldPublisher(RecordingPublisher):
    """Keeps what it is given, then holds each publish until `release` is set."""

    def __init__(self, release: asyncio.Event) -> None:
        super().__init__()
        self.release = release

    async def publish(
        self, message: aio_pika.Message, routing_key: str, *, exchange: str = "docproc"
    ) -> None:
        await super().publish(message, routing_key, exchange=exchange)
        await self.release.wait()


async def test_two_redrives_reading_the_same_letters_at_once_publish_each_once(
    database_url: str, store: Store
) -> None:
    """Two API processes each running a redrive over the same letters: both read them before
    either recorded them, and both published every one. Now each letter is claimed before it
    goes out; the second redrive is told why it did not send them."""
    ids = bury(store, *(dead_message(queue="retry_queue") for _ in range(5)))
    shared = AsyncStore(database_url)
    release = asyncio.Event()
    held, quick = HeldPublisher(release), RecordingPublisher()
    stop = asyncio.Event()
    try:
        first_job = await shared.write(redrives.create, Filters(queue="retry_queue"), 100.0)
        second_job = await shared.write(redrives.create, Filters(queue="retry_queue"), 100.0)
        first = asyncio.create_task(
            RedriveRunner(shared, held, owner="first")._group(first_job, ids, stop)
        )

        async def publishing() -> bool | None:
            return True if held.sent else None

        await eventually(publishing, 10, "the first redrive to be publishing")
        await RedriveRunner(shared, quick, owner="second")._group(second_job, ids, stop)
        release.set()
        await first
        jobs = [await shared.run(redrives.get, job.id) for job in (first_job, second_job)]
    finally:
        release.set()
        await shared.close()

    assert len(held.sent) == 5
    assert quick.sent == [], "the second redrive sent none of them again"
    assert [(job.published, job.failed) for job in jobs if job] == [(5, 0), (0, 5)]
    assert jobs[1] is not None
    assert "taken for re-publishing" in str(jobs[1].last_error)


async def test_a_header_name_amqp_would_cut_short_is_a_409_not_a_changed_message(
    client: Client, store: Store, publisher: RecordingPublisher
) -> None:
    """RabbitMQ passes a header name longer than AMQP's 128 bytes on; re-published, pamqp cut it
    to 128 — two such names alike in their first 128 bytes became one."""
    long = dead_message(queue="retry_queue")
    long.headers["x-meta"] = {"k" * 129: "first", "k" * 128 + "2": "second"}
    [record_id] = bury(store, long)

    answer = await client.post(f"/dead-letters/{record_id}/republish")

    assert answer.status_code == 409, answer.text
    assert "longer than the 128 bytes AMQP allows a name" in answer.json()["detail"]
    assert publisher.sent == []


async def test_concurrent_retries_of_a_failed_document_publish_it_once(
    settings_for: Callable[..., Settings], store: Store, publisher: RecordingPublisher
) -> None:
    """Eight retries at once through uvicorn (the test client runs requests one at a time): one
    202 and one message, the others a 409 saying why. On the code before, several published (two
    runs in five, by the review that found it)."""
    with served_by_uvicorn(create_app(settings_for(), publisher=publisher)) as port:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            accepted = await http.post(
                "/documents", files={"file": ("a.txt", b"the storm", "text/plain")}
            )
            task_id = accepted.json()["task_id"]
            store.run(
                task_runs.record_failure,
                task_id,
                "docproc.document.process",
                state="FAILURE",
                error_type="TimeLimitExceeded",
                message="too slow",
            )
            sent_before = len(publisher.sent)
            answers = await asyncio.gather(
                *(http.post(f"/tasks/{task_id}/retry") for _ in range(8))
            )

    codes = sorted(answer.status_code for answer in answers)
    assert codes == [202] + [409] * 7
    assert len(publisher.sent) - sent_before == 1


async def test_no_other_sites_page_can_change_anything_even_without_keys(
    client: Client, store: Store, publisher: RecordingPublisher
) -> None:
    """With no API keys (the default), a page on another site an operator had open sent
    `fetch(api + "/dead-letters/redrive", {method: "POST", mode: "no-cors", body: '{"all":
    true, "include_delivery_limit": true}'})` — a text/plain body, no preflight — and every dead
    letter was re-published, those that kill workers included."""
    bury(store, dead_message(queue="retry_queue"))
    body = b'{"all": true, "include_delivery_limit": true}'
    plain = {"Content-Type": "text/plain"}
    refused = [
        await client.post("/dead-letters/redrive", content=body, headers=plain | headers)
        for headers in (
            {"Sec-Fetch-Site": "cross-site", "Origin": "http://elsewhere.example"},
            {"Sec-Fetch-Site": "same-site", "Origin": "http://localhost:9"},  # another port
            {"Origin": "http://elsewhere.example"},  # a browser without Sec-Fetch-Site
            {"Origin": "null"},  # a sandboxed frame, a file
            {"Origin": "http://[abc"},  # no URL at all (it was a 500)
        )
    ]
    upload = await client.post(
        "/documents",
        files={"file": ("x.txt", b"from elsewhere", "text/plain")},
        headers={"Sec-Fetch-Site": "cross-site"},
    )

    for response in [*refused, upload]:
        assert response.status_code == 403, response.text
        assert response.headers["content-type"] == PROBLEM
        assert "another site" in response.json()["detail"]
        assert len(response.headers["x-correlation-id"]) == 32
    assert publisher.sent == []
    assert store.run(redrives.listing) == [], "no job started"

    own = client.headers.get("host") or httpx.URL(str(client.base_url)).netloc.decode()
    behind_a_proxy = [  # over plain HTTP no browser sends Sec-Fetch-Site: the Origin is all
        {
            "Origin": "http://docproc.lan",
            "Host": "127.0.0.1:8000",
            "X-Forwarded-Host": "docproc.lan",
        },
        {"Origin": "http://docproc.lan", "Host": "docproc.lan:80"},
        {"Origin": "https://docproc.example", "X-Forwarded-Host": "docproc.example:443"},
    ]
    for headers in (
        {"Sec-Fetch-Site": "same-origin"},
        {"Origin": f"http://{own}"},
        {},
        *behind_a_proxy,
    ):
        dry = await client.post(
            "/dead-letters/redrive", json={"all": True, "dry_run": True}, headers=headers
        )
        assert dry.status_code == 200, (headers, dry.text)


async def test_a_redrive_or_a_discard_takes_what_was_counted_or_nothing(
    client: Client, store: Store, publisher: RecordingPublisher
) -> None:
    """The console counted, the operator confirmed "Redrive 1 letter(s)" — and the job took
    every letter that had died meanwhile (31); "Discard 1 letter(s)" discarded 51. With the
    count it confirmed (`expected`), a request that would take another number is a 409."""
    [first] = bury(store, dead_message(error="a"), error=("CorruptFile", "not a PDF"))
    group = str(store.run(dead_letters.get, first).fingerprint)  # type: ignore[union-attr]
    counted = await client.post(
        "/dead-letters/redrive",
        json={"group": group, "dry_run": True, "include_delivery_limit": True},
    )
    assert counted.json()["matched"] == 1
    bury(store, dead_message(error="a"), error=("CorruptFile", "not a PDF"))  # died meanwhile
    assert len(store.run(dead_letters.matching, Filters(group=group))) == 2, "one group"

    started = await client.post(
        "/dead-letters/redrive", json={"group": group, "expected": 1, "rate": 50}
    )
    discarded = await client.delete(f"/dead-letters/groups/{group}", params={"expected": 1})

    for response in (started, discarded):
        assert response.status_code == 409, response.text
        assert response.headers["content-type"] == PROBLEM
        assert "2 letter(s) match now, not the 1 counted" in response.json()["detail"]
    assert store.run(redrives.listing) == [], "no job"
    assert len(store.run(dead_letters.matching, Filters(group=group))) == 2, "none discarded"

    as_counted = await client.delete(f"/dead-letters/groups/{group}", params={"expected": 2})
    assert as_counted.json()["discarded"] == 2
