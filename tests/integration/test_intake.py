"""Intake across broker trouble: documents accepted while the broker is away are queued within
seconds of its return, and a confirmed message that is later lost is found and re-published."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from service.broker.publisher import Publisher
from service.intake import Intake, Upload
from service.store import documents, task_runs
from service.store.database import AsyncStore, Store
from service.task_contract import RECONCILE
from service.worker.app import create_celery
from tests.store.test_documents_and_search import add_document
from tests.support import (
    CuttableLink,
    RabbitMQ,
    Vhost,
    eventually,
    start_api,
    start_worker,
)

pytestmark = [pytest.mark.rabbitmq]

PROMPT = 5.0
"""Documents accepted while the broker was away are published within this many seconds of its
return (the requirement; the publisher retries every second at most)."""


async def test_documents_accepted_while_the_broker_is_away_are_queued_promptly_on_its_return(
    vhost: Vhost, rabbitmq: RabbitMQ, tmp_path: Path
) -> None:
    link = CuttableLink(rabbitmq.host, rabbitmq.port)
    await link.heal()
    through_link = vhost.url.replace(f":{rabbitmq.port}/", f":{link.port}/")
    api = await start_api(vhost, tmp_path / "api.log", DOCPROC_BROKER_URL=through_link)
    store = Store(vhost.settings().resolved_database_url)
    try:
        await link.cut()
        async with httpx.AsyncClient(base_url=api.url, timeout=30) as http:
            accepted = []
            for n in range(3):
                response = await http.post(
                    "/documents", files={"file": (f"away-{n}.txt", f"Away {n}.".encode())}
                )
                assert response.status_code == 202, response.text
                assert response.json()["queued"] is False
                accepted.append(response.json()["document_id"])
            ready = await http.get("/ready")
            assert ready.status_code == 503
            assert ready.json()["broker"] != "ok"

        await link.heal()
        back = time.monotonic()

        async def published() -> bool | None:
            found = [store.run(documents.get, document_id) for document_id in accepted]
            return True if all(d is not None and d.published_at for d in found) else None

        await eventually(published, PROMPT, "every waiting document to be published", 0.05)
        took = time.monotonic() - back
        assert "queued a document accepted while the broker was away" in api.process.output()
    finally:
        store.close()
        api.stop()
        await link.cut()
    connection = await vhost.connect()
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue("document_processing", passive=True)
    assert queue.declaration_result.message_count == 3, f"published once each ({took:.1f} s)"


@pytest.mark.worker
async def test_a_confirmed_message_that_was_lost_is_found_and_republished(
    vhost: Vhost, tmp_path: Path
) -> None:
    settings = vhost.settings()
    store = Store(settings.resolved_database_url)
    worker = await start_worker(vhost, tmp_path / "worker.log", DOCPROC_RECONCILE_AFTER="1")
    client = create_celery(settings)
    try:
        # Accepted and confirmed an hour ago — then its message vanished (a purged queue).
        document_id = add_document(store, b"The lost letter was found at last.", "lost.txt")
        document = store.run(documents.get, document_id)
        assert document is not None
        long_ago = datetime.now(UTC) - timedelta(hours=1)
        store.run(
            lambda c: c.execute(
                text("UPDATE documents SET published_at = :at WHERE id = :id"),
                {"at": long_ago.replace(tzinfo=None), "id": document_id},
            )
        )
        store.run(task_runs.record_pending, document.task_id, "docproc.document.process")
        store.run(
            lambda c: c.execute(
                text("UPDATE task_runs SET updated_at = :at WHERE task_id = :id"),
                {"at": long_ago.replace(tzinfo=None), "id": document.task_id},
            )
        )

        client.send_task(RECONCILE)

        async def processed() -> bool | None:
            run = store.run(task_runs.get, document.task_id)
            return True if run is not None and run.state == "SUCCESS" else None

        await eventually(processed, 60, "the lost document to be processed")
        found = store.run(documents.get, document_id)
        assert found is not None
        assert store.run(documents.reconciled) == 1
    finally:
        client.close()
        worker.stop()
        store.close()


@contextlib.asynccontextmanager
async def intake_through(
    vhost: Vhost, link: CuttableLink, store_url: str
) -> AsyncIterator[tuple[Intake, Publisher]]:
    """The API's intake, its publisher connected to RabbitMQ through `link`, running."""
    through = vhost.url.replace(f":{vhost.rabbitmq.port}/", f":{link.port}/")
    publisher = Publisher(vhost.settings(DOCPROC_BROKER_URL=through), timeout=1.0)
    shared = AsyncStore(store_url)
    intake = Intake(shared, publisher)
    publisher.on_connect = intake.wake.set
    stop = asyncio.Event()
    await publisher.start()
    running = asyncio.create_task(intake.run(stop))
    try:
        yield intake, publisher
    finally:
        stop.set()
        await running
        await publisher.close()
        await shared.close()


def upload_of(content: bytes) -> Upload:
    return Upload(
        filename="held.txt",
        content_type="text/plain",
        content=content,
        sha256=hashlib.sha256(content).hexdigest(),
        correlation_id=uuid.uuid4().hex,
    )


async def published(store: Store, document_id: str, what: str) -> None:
    async def marked() -> bool | None:
        found = store.run(documents.get, document_id)
        return True if found is not None and found.published_at is not None else None

    await eventually(marked, 30, what)


async def queued_messages(vhost: Vhost) -> int:
    connection = await vhost.connect()
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue("document_processing", passive=True)
        return int(queue.declaration_result.message_count or 0)


@pytest.mark.parametrize("then", ["read again", "connection lost"])
async def test_an_upload_whose_confirm_is_late_is_published_once(
    vhost: Vhost, rabbitmq: RabbitMQ, then: str
) -> None:
    """RabbitMQ blocked (a memory or disk alarm) reads nothing on a connection that stays up:
    the upload's confirm does not come in time (5 s; 1 s here), and it is answered `queued:
    false`. The relay published it again every few seconds on the same connection — each copy
    written, none confirmed — and when RabbitMQ read again, every copy went in: a document that
    fails was processed, and dead-lettered, once a copy. The publish is now left to end: its late
    confirm marks the document published; lost with its connection, it is published again, once."""
    url = vhost.settings().resolved_database_url
    link = CuttableLink(rabbitmq.host, rabbitmq.port)
    await link.heal()
    store = Store(url)
    try:
        async with intake_through(vhost, link, url) as (intake, _):
            link.hold()
            receipt = await intake.submit(upload_of(f"accepted, then {then}".encode()))
            assert receipt.queued is False
            assert receipt.document_id not in intake.waiting, "its confirm may yet come"
            if then == "read again":
                await link.release()
            else:
                await link.cut()  # what was held is lost with the connection
                await link.heal()
            await published(store, receipt.document_id, f"it to be published ({then})")
    finally:
        store.close()
        await link.cut()
    assert await queued_messages(vhost) == 1
