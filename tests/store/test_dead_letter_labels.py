"""Dead letters published straight to docproc.dlx, with a forged x-death or none: each is kept
as it said, and /metrics' gauge labels them from a bounded set."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from service import figures
from service.deadletters.consumer import store_batch
from service.deadletters.parsing import RawMessage
from service.store import dead_letters
from service.store.database import Store


def forged(headers: dict[str, Any], routing_key: str) -> RawMessage:
    return RawMessage(
        body=b"not a task",
        headers=headers,
        properties={"content_type": "text/plain"},
        routing_key=routing_key,
    )


def death(reason: str, queue: str) -> dict[str, Any]:
    return {
        "x-death": [
            {"count": 1, "reason": reason, "queue": queue, "time": datetime.now(UTC)},
        ]
    }


def test_forged_letters_keep_what_they_said_and_add_no_series(store: Store) -> None:
    messages = [
        forged(death(f"reason-{n}", "document_processing"), "document_processing") for n in range(3)
    ]
    messages += [forged(death("rejected", f"queue-{n}"), f"queue-{n}") for n in range(3)]
    messages += [forged({}, f"routing-key-{n}") for n in range(3)]
    messages += [forged(death("expired", "retry_queue"), "retry_queue")]
    store.run(store_batch, messages)

    kept = sorted(store.run(dead_letters.counts))
    found = store.run(figures.from_store)

    assert len(kept) == len(messages)  # every letter as its message said
    assert ("reason-0", "document_processing", 1) in kept
    assert ("unknown", "routing-key-0", 1) in kept
    assert sorted(found.dead_letters) == kept
    assert sorted(figures.dead_letter_series(found.dead_letters)) == [
        ("expired", "retry_queue", 1),
        ("other", "document_processing", 3),
        ("rejected", "other", 3),
        ("unknown", "other", 3),
    ]
