"""Any bytes and headers become a dead-letter record — on SQLite and PostgreSQL alike: what cannot
be read is stored raw or sanitised and flagged, never raised (the DLQ consumer would meet the same
message again at every delivery)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from service.deadletters.consumer import quarantined, store_batch
from service.deadletters.parsing import RawMessage, read
from service.store import dead_letters
from service.store.database import Store

DIED = datetime(2026, 1, 1, tzinfo=UTC)


def raw(headers: dict[str, Any], body: bytes = b"[[], {}, {}]") -> RawMessage:
    return RawMessage(body=body, headers=headers, properties={"content_type": "application/json"})


HOSTILE = {
    "count-not-a-number": {"x-death": [{"count": "abc", "reason": "rejected", "queue": "q"}]},
    "routing-keys-not-a-list": {"x-death": [{"count": 1, "routing-keys": "document_processing"}]},
    "x-death-not-a-list": {"x-death": "yesterday"},
    "nul-in-task-name": {"task": "docproc\x00.evil", "id": "t-nul"},
    "nul-deep-in-a-header": {"task": "t", "id": "t-2", "x-note": {"deep": ["a\x00b"]}},
    "a-huge-task-name": {"task": "x" * 10_000, "id": "t-3"},
    "a-time-that-is-not-a-time": {"x-death": [{"count": 1, "time": "noon"}]},
    "tagged-lookalike": {"task": "t", "id": "t-4", "x-tag": {"$bytes": "!!!"}},
    "an-id-that-is-a-dict": {"task": "docproc.document.process", "id": {"nested": True}},
}


@pytest.mark.parametrize("name", HOSTILE)
def test_a_hostile_message_is_stored_and_says_what_was_odd(store: Store, name: str) -> None:
    message = raw(HOSTILE[name])

    [(record_id, created)] = store.run(store_batch, [message])

    assert created
    letter = store.run(dead_letters.get, record_id)
    assert letter is not None
    assert letter.body == message.body, "the body is kept byte for byte"
    if name not in ("tagged-lookalike",):
        assert letter.problems or letter.error_type, "what was odd is said"


def test_a_malformed_task_message_says_why_it_died(store: Store) -> None:
    letter = read(raw({"task": "docproc.canary.succeed"}))  # no id: killed Celery's main process

    assert letter.error_type == "MalformedTaskMessage"
    assert letter.error_message is not None
    assert "header id" in letter.error_message


@pytest.mark.parametrize("retries", [2**31, 2**40, -1, True])
def test_a_retry_count_no_store_keeps_is_malformed(store: Store, retries: int) -> None:
    """2 ** 40 retries once made a backoff of 2 ** (2 ** 40) seconds, before its cap."""
    letter = read(raw({"task": "docproc.canary.succeed", "id": "t-6", "retries": retries}))

    assert letter.error_type == "MalformedTaskMessage"
    assert letter.error_message is not None
    assert "header retries" in letter.error_message


def test_a_letter_the_store_refuses_is_quarantined_in_a_form_it_takes(store: Store) -> None:
    letter = quarantined(read(raw({"task": "t\u2603", "id": "t-5", "x": b"\x00\x01"})))

    assert letter.task_name == "t\\u2603"
    assert letter.problems is not None
    assert "escaped" in letter.problems[-1]
    assert set(letter.headers) == {"unreadable"}


def test_counts_beyond_the_stores_integers_are_kept_in_the_quarantined_form(
    store: Store,
) -> None:
    """A `retries` header of 2**31, an x-death count of 2**40: PostgreSQL's INTEGER refuses
    them, and the quarantined form kept them — refused again, the letter, and every one behind
    it, went back to the queue for ever. Its counts are now what the store takes; the headers,
    escaped, still say what the message said."""
    message = raw(
        {
            "task": "t",
            "id": "t-6",
            "retries": 2**31,
            "x-death": [{"count": 2**40, "reason": "rejected", "queue": "q", "time": DIED}],
        }
    )
    [(record_id, created)] = store.run(store_batch, [message], quarantine=True)

    assert created
    letter = store.run(dead_letters.get, record_id)
    assert letter is not None
    assert (letter.retries, letter.death_count) == (None, 2**31 - 1)
    assert str(2**40) in str(letter.headers)
    assert letter.problems is not None
    assert "counts beyond" in letter.problems[-1]


def test_a_quarantined_text_escaped_past_its_column_is_cut_to_it(store: Store) -> None:
    """A task name of 30 emoji fits its column (255) as read; escaped to ASCII it is 300
    characters. The quarantined form overflowed the column on PostgreSQL, was refused too, and the
    letter — with every one behind it — went back to the queue for ever. The escaped text is cut
    to its column now."""
    message = raw(
        {
            "task": "\U0001f600" * 30,
            "id": "\u2603" * 50,
            "retries": 2**31,  # refused as read on PostgreSQL: the letter is quarantined
            "x-death": [{"count": 1, "reason": "\u2603" * 30, "queue": "q", "time": DIED}],
        }
    )
    [(record_id, created)] = store.run(store_batch, [message], quarantine=True)

    assert created
    letter = store.run(dead_letters.get, record_id)
    assert letter is not None
    assert letter.task_name is not None
    assert len(letter.task_name) == 255
    assert letter.task_name.startswith("\\U0001f600")
    assert (len(str(letter.task_id)), len(letter.reason)) == (255, 32)
