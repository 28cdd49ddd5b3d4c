"""The DLQ consumer's books: N dead messages are N records, identical ones included, wherever the
consumer was killed (the protocol itself is in service.deadletters.consumer; the broker side is
tested in tests/integration/test_dead_letter_store.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from service.deadletters import consumer as consumer_module
from service.deadletters.consumer import LEASE, LeaseLost, store_batch
from service.deadletters.parsing import RawMessage
from service.store import dead_letters, leases, ledger, outcomes, task_runs
from service.store.database import Store
from service.store.dead_letters import Filters
from service.store.schema import dead_letters as table
from tests.store.test_dead_letters import message

SESSION = "consumer-1"


def count(store: Store) -> int:
    return int(store.run(lambda c: c.execute(select(func.count()).select_from(table)).scalar_one()))


def identical(n: int, *, redelivered: bool = False) -> list[RawMessage]:
    died = datetime(2026, 1, 1, tzinfo=UTC)
    return [message(0, died, redelivered=redelivered) for _ in range(n)]


@pytest.fixture
def consumer(store: Store) -> str:
    assert store.run(leases.acquire, LEASE, SESSION, 30.0)
    return SESSION


def test_killed_between_commit_and_ack_the_batch_comes_back_and_matches_its_records(
    store: Store, consumer: str
) -> None:
    first = store.run(store_batch, identical(5), session=consumer)
    # Killed before the ack: the batch comes back, redelivered, with three more that were
    # delivered after it but never committed (a larger batch, as the next consumer sees it).
    again = store.run(store_batch, identical(8, redelivered=True), session=consumer)

    assert [created for _, created in first] == [True] * 5
    assert sorted(r for r, created in again if not created) == sorted(r for r, _ in first)
    assert sum(created for _, created in again) == 3
    assert count(store) == 8


def test_a_batch_whose_ack_was_lost_with_its_channel_matches_over_the_next_channels_batches(
    store: Store, consumer: str
) -> None:
    """The connection is lost between a batch's commit and its ack; the process lives on and its
    next channel takes the batch back two and three at a time, clearing its own rows after each
    ack. With one book for the whole process, the first clear dropped the three rows still to
    be matched, and those three were stored again."""
    first = store.run(store_batch, identical(5), session=consumer, book="channel-1")
    again = store.run(
        store_batch, identical(2, redelivered=True), session=consumer, book="channel-2"
    )
    store.run(ledger.clear, "channel-2")  # its ack went through
    rest = store.run(
        store_batch, identical(3, redelivered=True), session=consumer, book="channel-2"
    )

    assert [created for _, created in first] == [True] * 5
    assert not any(created for _, created in again + rest)
    assert count(store) == 5


def test_killed_before_commit_the_batch_comes_back_and_is_stored_once(
    store: Store, consumer: str
) -> None:
    stored = store.run(store_batch, identical(5, redelivered=True), session=consumer)

    assert all(created for _, created in stored)
    assert count(store) == 5


def test_after_an_ack_the_rows_go_and_identical_messages_are_new_records(
    store: Store, consumer: str
) -> None:
    store.run(store_batch, identical(5), session=consumer)
    store.run(ledger.clear, consumer)  # the ack went through

    later = store.run(store_batch, identical(5, redelivered=True), session=consumer)

    assert all(created for _, created in later), "nothing of the first batch came back"
    assert count(store) == 10


def test_a_fresh_message_proves_leftover_rows_stale(store: Store, consumer: str) -> None:
    store.run(store_batch, identical(5), session=consumer)  # acked, but killed before clearing

    store.run(store_batch, identical(2), session=consumer)  # fresh: rows of before are stale
    store.run(ledger.clear, consumer)
    returned = store.run(store_batch, identical(3, redelivered=True), session=consumer)

    assert all(created for _, created in returned)
    assert count(store) == 10


def test_a_consumer_without_the_lease_stores_nothing(store: Store, consumer: str) -> None:
    with pytest.raises(LeaseLost):
        store.run(store_batch, identical(1), session="consumer-2")
    assert count(store) == 0
    assert not store.run(leases.acquire, LEASE, "consumer-2", 30.0), "the holder keeps it"
    store.run(leases.release, LEASE, consumer)
    assert store.run(leases.acquire, LEASE, "consumer-2", 30.0), "released, it is taken"


def test_a_consumer_that_lost_the_lease_clears_nobodys_rows_and_the_rows_say_whose(
    store: Store, consumer: str
) -> None:
    """A hand-over's clear by a consumer that lost the lease while it was cut off (and has not
    noticed) dropped the rows of the consumer that took the lease over: a batch of that one's
    then came back unmatched and was stored twice. The clear now holds the lease or does nothing;
    and the rows of another process's batch are told apart from this process's own."""
    store.run(store_batch, identical(2), session=consumer, book="book-of-1")

    with pytest.raises(LeaseLost):
        store.run(consumer_module._clear_holding, "consumer-2")

    assert store.run(ledger.size) == 2
    assert store.run(ledger.left_by_others, {"book-of-2"})
    assert not store.run(ledger.left_by_others, {"book-of-1", "book-of-2"})
    assert store.run(leases.last_holder, LEASE) == consumer
    store.run(consumer_module._clear_holding, consumer)
    assert store.run(ledger.size) == 0


def test_a_letter_of_a_task_that_succeeded_is_superseded_and_success_stays(store: Store) -> None:
    died = datetime.now(UTC)
    store.run(task_runs.record_pending, "t-1", "docproc.document.process")
    store.run(outcomes.task_succeeded, "t-1")

    [(record_id, _)] = store.run(store_batch, [message(1, died)])

    run = store.run(task_runs.get, "t-1")
    assert run is not None
    assert run.state == "SUCCESS", "a late dead letter never turns SUCCESS into DEAD"
    assert store.run(dead_letters.page, Filters(), limit=10).items == []
    [superseded] = store.run(dead_letters.page, Filters(status="superseded"), limit=10).items
    assert superseded.id == record_id
    assert store.run(dead_letters.counts) == [], "not counted as a failure"


def test_a_task_that_succeeds_after_its_letter_supersedes_it(store: Store) -> None:
    [(record_id, _)] = store.run(store_batch, [message(1, datetime.now(UTC))])
    run = store.run(task_runs.get, "t-1")
    assert run is not None
    assert run.state == "DEAD"

    store.run(outcomes.task_succeeded, "t-1")  # a second delivery, swept, then succeeded

    letter = store.run(dead_letters.get, record_id)
    assert letter is not None
    assert letter.superseded_at is not None
    after = store.run(task_runs.get, "t-1")
    assert after is not None
    assert after.state == "SUCCESS"
    store.run(task_runs.record_retry, "t-1", retries=1, delay=1, error_type="X", message="x")
    store.run(outcomes.task_failed, "t-1", "t", state="FAILURE", error_type="X", message="x")
    final = store.run(task_runs.get, "t-1")
    assert final is not None
    assert final.state == "SUCCESS", "nothing moves a run back from SUCCESS"
