"""/metrics' dead-letter gauge: letters published straight to docproc.dlx, with a forged x-death
or none, add no series."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.deadletters.consumer import store_batch
from service.deadletters.parsing import RawMessage
from service.store.database import Store
from tests.api.conftest import Client

pytestmark = pytest.mark.rabbitmq


def forged(reason: str | None, queue: str) -> RawMessage:
    death = [{"count": 1, "reason": reason, "queue": queue, "time": datetime.now(UTC)}]
    return RawMessage(
        body=b"forged",
        headers={"x-death": death} if reason else {},
        properties={"content_type": "text/plain"},
        routing_key=queue,
    )


async def test_forged_dead_letters_are_labelled_other(client: Client, store: Store) -> None:
    store.run(
        store_batch,
        [forged(f"reason-{n}", f"queue-{n}") for n in range(3)]
        + [forged(None, f"routing-key-{n}") for n in range(3)]
        + [forged("rejected", "document_processing")],
    )

    metrics = await client.get("/metrics")

    series = {
        (sample.labels["reason"], sample.labels["queue"]): sample.value
        for family in text_string_to_metric_families(metrics.text)
        for sample in family.samples
        if sample.name == "docproc_dead_letters"
    }
    assert series == {
        ("other", "other"): 3,
        ("unknown", "other"): 3,
        ("rejected", "document_processing"): 1,
    }
