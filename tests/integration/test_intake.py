"""Intake across broker trouble: documents accepted while the broker is away are queued within
seconds of its return, and a confirmed message that is later lost is found and re-published."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from service.store import documents, task_runs
from service.store.database import Store
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
