"""POST /documents, GET /documents/{id}[/text], GET /search, against a real broker and store."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import aio_pika
import httpx
import msgspec
import pytest
from litestar.testing import AsyncTestClient
from loguru import logger
from sqlalchemy import text

from service.api.app import create_app
from service.api.routes.documents import MAX_CONCURRENT_SEARCHES
from service.pipeline import Chunk
from service.settings import Settings
from service.store import documents, search
from service.store.database import Store
from service.store.documents import Extraction
from service.task_contract import PROCESS_DOCUMENT
from tests import office_files
from tests.api.conftest import Client, refused_updates, take
from tests.hostile_files import zip_members_marked
from tests.support import eventually

pytestmark = pytest.mark.rabbitmq

TEXT = b"The lighthouse keeper kept the lamp lit through the storm."


def marked_published(store: Store, document_id: str) -> Callable[[], Awaitable[bool | None]]:
    """A probe for `eventually`: the document is marked published. Marks are written in batches,
    just after the confirm (service.intake)."""

    async def probe() -> bool | None:
        document = store.run(documents.get, document_id)
        return True if document is not None and document.published_at is not None else None

    return probe


async def upload(client: Client, content: bytes = TEXT, name: str = "note.txt", **kw: object):  # type: ignore[no-untyped-def]
    return await client.post("/documents", files={"file": (name, content, "text/plain")}, **kw)


def processed(store: Store, document_id: str) -> None:
    """The document stored as processed, its text TEXT in one chunk."""
    words = TEXT.decode()
    chunk = Chunk(position=0, start=0, end=len(words), text=words)
    extraction = Extraction(
        detected_type="text",
        title=None,
        encoding="utf-8",
        page_count=None,
        text=words,
        chunks=[chunk],
    )
    store.run(documents.store_extraction, document_id, extraction)


async def test_an_upload_is_accepted_durably_and_its_task_published_as_celery_would(
    client: Client, channel: aio_pika.abc.AbstractChannel, store: Store
) -> None:
    response = await upload(client, headers={"X-Correlation-ID": "req-7"})

    assert response.status_code == 202
    accepted = response.json()
    assert accepted["status"] == "PENDING"
    assert accepted["queued"] is True
    assert response.headers["location"] == f"/tasks/{accepted['task_id']}/status"
    assert response.headers["x-correlation-id"] == "req-7"
    message = await take(channel, "document_processing")
    assert message.headers["task"] == PROCESS_DOCUMENT
    assert message.headers["id"] == accepted["task_id"]
    assert message.headers["x-correlation-id"] == "req-7"
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert msgspec.json.decode(message.body)[1] == {"document_id": accepted["document_id"]}
    stored = store.run(documents.get, accepted["document_id"])
    assert stored is not None
    assert stored.sha256
    assert stored.size == len(TEXT)

    await eventually(marked_published(store, accepted["document_id"]), 10, "the publish mark")

    status = await client.get(f"/tasks/{accepted['task_id']}/status")
    assert status.json()["state"] == "PENDING"
    assert status.json()["correlation_id"] == "req-7"
    document = await client.get(f"/documents/{accepted['document_id']}")
    assert document.status_code == 200
    assert document.json()["state"] == "PENDING"
    assert document.json()["filename"] == "note.txt"


async def test_a_correlation_id_is_made_when_none_or_a_bad_one_is_given(client: Client) -> None:
    made = await client.get("/health")
    bad = await client.get("/health", headers={"X-Correlation-ID": "bad id with spaces"})

    assert len(made.headers["x-correlation-id"]) == 32
    assert bad.headers["x-correlation-id"] != "bad id with spaces"


async def test_upload_errors_are_problems_with_their_reason(
    client: Client, settings_for: Callable[..., Settings]
) -> None:
    missing = await client.post("/documents", files={"other": ("a.txt", b"x", "text/plain")})
    empty = await upload(client, b"")
    image = await upload(client, b"GIF89a" + bytes(200), "animation.gif")
    not_multipart = await client.post("/documents", json={"file": "x"})
    locked = await upload(client, zip_members_marked(office_files.xlsx(), encrypted=True), "b.xlsx")

    for response, status in (
        (missing, 400),
        (empty, 422),
        (image, 415),
        (not_multipart, 400),
        (locked, 415),
    ):
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["status"] == status
    assert "file" in missing.text
    assert "empty" in empty.json()["detail"]
    assert "GIF" in image.json()["detail"]


def multipart(*parts: tuple[str, bytes]) -> tuple[bytes, dict[str, str]]:
    """A multipart body of raw parts, each its headers and content, as a hostile client sends it."""
    body = b"".join(
        b"--B0undary\r\n" + headers.encode() + b"\r\n\r\n" + content + b"\r\n"
        for headers, content in parts
    )
    return body + b"--B0undary--\r\n", {"Content-Type": "multipart/form-data; boundary=B0undary"}


FILE = 'Content-Disposition: form-data; name="file"; filename="note.txt"'


async def test_the_file_is_read_and_every_other_part_skipped_undecoded(client: Client) -> None:
    """Only the file is read. Other parts are never decoded as text: in a charset such as
    punycode (whose decoder is quadratic: 300 kB once held the API 9 s), one that is no text
    codec, or bytes that do not decode, they once made a 500. A file part without a file name
    (`curl -F file=<note.txt`) is a file all the same."""
    hostile = [
        ('Content-Disposition: form-data; name="x"\r\nContent-Type: text/plain; charset=punycode',
         b"abc-" + b"9" * 300_000 + b"\xff"),
        ('Content-Disposition: form-data; name="y"\r\nContent-Type: text/plain; charset=rot13',
         b"x"),
        ('Content-Disposition: form-data; name="z"\r\nContent-Type: text/plain; charset=utf-16',
         b"odd"),
        ('Content-Disposition: form-data; name="w"', b"\xff\xfe not UTF-8"),
    ]  # fmt: skip
    for parts in (
        [*hostile, (FILE, TEXT)],
        [('Content-Disposition: form-data; name="file"', TEXT)],
    ):
        body, headers = multipart(*parts)
        response = await client.post("/documents", content=body, headers=headers)
        assert response.status_code == 202, response.text
        document = await client.get(f"/documents/{response.json()['document_id']}")
        assert document.json()["size"] == len(TEXT)

    for parts, reason in (
        ([(FILE, TEXT), (FILE, TEXT)], "this one has 2"),
        ([('Content-Disposition: form-data; name="other"', TEXT)], "this one has 0"),
    ):
        body, headers = multipart(*parts)
        response = await client.post("/documents", content=body, headers=headers)
        assert response.status_code == 400, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert reason in response.json()["detail"]
    body, headers = multipart((FILE, TEXT))
    for broken in (body[:-20], body.replace(b"\r\n\r\n", b"\r\n", 1)):
        response = await client.post("/documents", content=broken, headers=headers)
        assert response.status_code == 400, response.text
        assert "multipart body is malformed" in response.json()["detail"]
    response = await client.post("/documents", content=body, headers={"Content-Type": "text/plain"})
    assert response.status_code == 400
    assert "multipart/form-data" in response.json()["detail"]


async def test_an_upload_over_the_limit_is_refused_with_413_without_reading_it(
    settings_for: Callable[..., Settings],
) -> None:
    app = create_app(settings_for(DOCPROC_MAX_UPLOAD_BYTES="1000"))
    async with AsyncTestClient(app) as small:
        just_over = await upload(small, b"a" * 1001)
        far_over = await upload(small, b"a" * (5 * 1024 * 1024))

    assert just_over.status_code == 413
    assert "1000" in just_over.json()["detail"]
    assert far_over.status_code == 413  # refused on Content-Length, before the body is read
    assert far_over.headers["content-type"] == "application/problem+json"


READS = ("/dead-letters", "/dead-letters/groups", "/tasks/stats", "/search?q=lighthouse")
OPEN = ("/health", "/metrics", "/schema/openapi.json", "/schema/swagger")


async def test_with_keys_set_every_endpoint_but_the_open_ones_needs_a_valid_key(
    settings_for: Callable[..., Settings],
) -> None:
    app = create_app(settings_for(DOCPROC_API_KEYS="s3cret,other"))
    async with AsyncTestClient(app) as guarded:
        anonymous = await upload(guarded)
        wrong = await upload(guarded, headers={"Authorization": "Bearer nope"})
        right = await upload(guarded, headers={"Authorization": "Bearer other"})
        task_id = right.json()["task_id"]
        reads = [await guarded.get(path) for path in (*READS, f"/tasks/{task_id}/status")]
        keyed = await guarded.get("/dead-letters", headers={"Authorization": "Bearer s3cret"})
        open_ = [await guarded.get(path) for path in OPEN]
        document = await guarded.get("/schema/openapi.json")
        metrics = (await guarded.get("/metrics")).text

    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"].startswith("Bearer")
    assert wrong.status_code == 403
    assert "nope" not in wrong.text
    # Refused in a middleware, answered there: with the request's id, counted as what it was
    # (raised, they passed out through the metrics middleware as 500s, with no id).
    for refused in (anonymous, wrong, *reads):
        assert len(refused.headers["x-correlation-id"]) == 32
    counted = [line for line in metrics.splitlines() if line.startswith("docproc_requests_total{")]
    assert not [line for line in counted if 'status_code="500"' in line], counted
    assert any('path="/documents"' in line and 'status_code="403"' in line for line in counted)
    assert right.status_code == 202
    assert [r.status_code for r in reads] == [401] * len(reads), "reads are protected too"
    assert keyed.status_code == 200
    assert [r.status_code for r in open_] == [200] * len(OPEN)
    spec = document.json()
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert spec["paths"]["/dead-letters"]["get"]["security"] == [{"bearer": []}]
    assert "security" not in spec["paths"]["/health"]["get"]


async def test_public_reads_open_the_reads_only(settings_for: Callable[..., Settings]) -> None:
    app = create_app(settings_for(DOCPROC_API_KEYS="s3cret", DOCPROC_PUBLIC_READS="true"))
    async with AsyncTestClient(app) as guarded:
        reads = [await guarded.get(path) for path in READS]
        write = await upload(guarded)

    assert [r.status_code for r in reads] == [200] * len(READS)
    assert write.status_code == 401


async def test_with_the_store_down_an_upload_is_a_503_problem(api_vhost) -> None:  # type: ignore[no-untyped-def]
    settings = api_vhost.settings(DOCPROC_DATABASE_URL="postgresql://nobody@127.0.0.1:1/none")
    async with AsyncTestClient(create_app(settings)) as down:
        response = await upload(down)
        ready = await down.get("/ready")

    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"]
    assert ready.status_code == 503
    assert ready.json()["broker"] == "ok"
    assert ready.json()["store"].startswith("unavailable")


async def test_text_and_search_once_a_document_is_processed(client: Client, store: Store) -> None:
    accepted = (await upload(client)).json()
    document_id = accepted["document_id"]
    not_yet = await client.get(f"/documents/{document_id}/text")
    processed(store, document_id)

    text = await client.get(f"/documents/{document_id}/text")
    hits = await client.get("/search", params={"q": "lighthouse storm", "limit": 5})

    assert not_yet.status_code == 404
    assert "no text yet" in not_yet.json()["detail"]
    assert text.json() == {"document_id": document_id, "text": TEXT.decode()}
    [hit] = hits.json()["items"]
    assert hit["document_id"] == document_id
    assert "[lighthouse]" in hit["snippet"]
    assert hits.json()["next_cursor"] is None
    assert (hits.json()["complete"], hits.json()["window"]) == (True, 10_000)


async def test_unknown_documents_and_bad_queries_are_problems(client: Client) -> None:
    missing = await client.get("/documents/no-such-id")
    missing_text = await client.get("/documents/no-such-id/text")
    no_query = await client.get("/search")
    too_many = await client.get("/search", params={"q": "x", "limit": 1000})

    assert (missing.status_code, missing_text.status_code) == (404, 404)
    assert (no_query.status_code, too_many.status_code) == (400, 400)
    for response in (missing, no_query, too_many):
        assert response.headers["content-type"] == "application/problem+json"


async def test_the_same_idempotency_key_names_the_same_upload_and_other_content_conflicts(
    client: Client, channel: aio_pika.abc.AbstractChannel, store: Store
) -> None:
    key = {"Idempotency-Key": "upload-42"}
    first = await upload(client, headers=key)
    again = await upload(client, headers=key)
    other = await upload(client, content=b"Another file altogether.", headers=key)
    unkeyed = await upload(client)

    assert (first.status_code, again.status_code) == (202, 202)
    assert again.json()["document_id"] == first.json()["document_id"]
    assert again.json()["task_id"] == first.json()["task_id"]
    assert again.json()["queued"] is True
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert other.status_code == 409
    assert other.headers["content-type"].startswith("application/problem+json")
    assert "upload-42" in other.json()["detail"]
    assert unkeyed.json()["document_id"] != first.json()["document_id"]
    count = store.run(lambda c: c.execute(text("SELECT count(*) FROM documents")).scalar_one())
    assert count == 2, "the replay stored nothing"
    first_message = await take(channel, "document_processing")
    second_message = await take(channel, "document_processing")
    assert {first_message.headers["id"], second_message.headers["id"]} == {
        first.json()["task_id"],
        unkeyed.json()["task_id"],
    }, "one message per document, none for the replay"


async def test_a_replay_names_the_earlier_copy_its_first_answer_named(client: Client) -> None:
    """The replay's receipt left `duplicate_of` out: the client that retried lost it."""
    original = await upload(client, headers={"Idempotency-Key": "original"})
    copy = await upload(client, headers={"Idempotency-Key": "copy"})
    replays = [
        await upload(client, headers={"Idempotency-Key": key}) for key in ("original", "copy")
    ]

    assert copy.json()["duplicate_of"] == original.json()["document_id"]
    assert [replay.json()["duplicate_of"] for replay in replays] == [
        None,
        original.json()["document_id"],
    ]


async def test_an_unreasonable_idempotency_key_is_a_400(client: Client) -> None:
    response = await upload(client, headers={"Idempotency-Key": "k" * 256})

    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()["detail"]


async def test_an_idempotency_keys_surrounding_whitespace_is_not_part_of_it(
    client: Client,
) -> None:
    """ "K1 " was a key of its own: other content under it was a second document, not a 409."""
    first = await upload(client, headers={"Idempotency-Key": "K1"})
    other = await upload(client, content=b"Other content.", headers={"Idempotency-Key": "K1 \t"})

    assert first.status_code == 202
    assert other.status_code == 409, other.text


async def test_once_the_document_is_durable_the_answer_is_202_even_if_the_store_then_fails(
    client: Client, channel: aio_pika.abc.AbstractChannel, store: Store
) -> None:
    # Marking the message published fails (the store, just after the accept transaction).
    with refused_updates(store, "documents", "published_at"):
        response = await upload(client)

    assert response.status_code == 202, response.text
    assert response.json()["queued"] is True, "it was confirmed: queued tells the truth"
    message = await take(channel, "document_processing")
    assert message.headers["id"] == response.json()["task_id"]


async def test_a_mark_the_store_refuses_for_a_moment_is_made_once_it_answers(
    client: Client, channel: aio_pika.abc.AbstractChannel, store: Store
) -> None:
    refusals: list[str] = []
    sink = logger.add(
        lambda line: refusals.append(line) if "the store refused a record" in line else None,
        level="WARNING",
    )
    with refused_updates(store, "documents", "published_at"):
        response = await upload(client)
        assert response.status_code == 202, response.text

        async def refused_twice() -> bool | None:
            return True if len(refusals) >= 2 else None

        await eventually(refused_twice, 10, "the mark to be refused, and tried again")
    document_id = response.json()["document_id"]

    async def marked() -> bool | None:
        document = store.run(documents.get, document_id)
        return True if document is not None and document.published_at is not None else None

    try:
        await eventually(marked, 10, "the mark to be made once the store answers")
    finally:
        logger.remove(sink)
    message = await take(channel, "document_processing")
    assert message.headers["id"] == response.json()["task_id"]


async def test_an_upload_whose_message_rabbitmq_returns_is_not_queued(
    client: Client, channel: aio_pika.abc.AbstractChannel, store: Store
) -> None:
    queue = await channel.get_queue("document_processing", ensure=False)
    exchange = await channel.get_exchange("docproc", ensure=False)
    keys = ("document_processing", "#.document_processing")  # direct, and delayed deliveries
    for key in keys:
        await queue.unbind(exchange, routing_key=key)
    try:
        response = await upload(client)
    finally:
        for key in keys:
            await queue.bind(exchange, routing_key=key)

    assert response.status_code == 202
    assert response.json()["queued"] is False, "a returned message was not published"
    # Once the queue is bound again, the relay publishes it (once).
    message = await take(channel, "document_processing")
    assert message.headers["id"] == response.json()["task_id"]
    # The message can be taken before the API has its confirm and writes the mark.
    await eventually(marked_published(store, response.json()["document_id"]), 10, "the mark")


async def test_a_search_past_its_window_answers_the_newest_matches_and_says_so(
    settings_for: Callable[..., Settings], store: Store
) -> None:
    async with AsyncTestClient(create_app(settings_for(DOCPROC_SEARCH_WINDOW="1"))) as client:
        accepted = [(await upload(client, content=TEXT + bytes([n]))).json() for n in range(2)]
        for document in accepted:
            processed(store, document["document_id"])

        broad = (await client.get("/search", params={"q": "lighthouse"})).json()

    assert (broad["complete"], broad["window"]) == (False, 1)
    assert [hit["document_id"] for hit in broad["items"]] == [accepted[1]["document_id"]]


async def test_identical_uploads_are_said_to_be_and_found_once(
    client: Client, store: Store
) -> None:
    first = (await upload(client, name="a.txt")).json()
    second = (await upload(client, name="copy-of-a.txt")).json()
    for accepted in (first, second):
        processed(store, accepted["document_id"])

    hits = (await client.get("/search", params={"q": "lighthouse"})).json()["items"]

    assert first["duplicate_of"] is None
    assert second["duplicate_of"] == first["document_id"]
    [hit] = hits
    assert {hit["document_id"], *hit["duplicates"]} == {
        first["document_id"],
        second["document_id"],
    }


async def test_searches_at_their_limit_hold_up_no_upload_and_no_status_read(
    settings_for: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Searches as slow as their deadline allows, as many as run at once and one waiting: an
    upload is still accepted and a status read still answered meanwhile. (httpx's ASGI
    transport: Litestar's test client serves one request at a time.)"""
    app = create_app(settings_for())
    async with (
        app.lifespan(),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client,
    ):
        await _searches_hold_up_nothing(client, monkeypatch)


async def _searches_hold_up_nothing(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    began, release = threading.Semaphore(0), threading.Event()

    def slow_search(*_: Any, **__: Any) -> search.Found:
        began.release()
        release.wait(60)
        return search.Found(hits=[])

    monkeypatch.setattr(search, "search", slow_search)
    searching = [
        asyncio.ensure_future(client.get("/search", params={"q": "lighthouse"}))
        for _ in range(MAX_CONCURRENT_SEARCHES + 1)
    ]
    try:
        for _ in range(MAX_CONCURRENT_SEARCHES):
            assert await asyncio.to_thread(began.acquire, True, 10)
        accepted = await asyncio.wait_for(
            client.post("/documents", files={"file": ("note.txt", TEXT, "text/plain")}), 10
        )
        assert accepted.status_code == 202, accepted.text
        status = await asyncio.wait_for(client.get(accepted.headers["Location"]), 10)
        assert status.status_code == 200, status.text
        assert not any(request.done() for request in searching)
    finally:
        release.set()
    assert [(await request).status_code for request in searching] == [200] * len(searching)
