"""Group commit on the real stores: uploads that arrive while a transaction runs are accepted
together in the next one; each caller is answered with its own outcome, once committed."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Sequence
from datetime import timedelta

import msgspec
import pytest
from sqlalchemy import Connection, select, update

from service.errors import Conflict, StoreUnavailable
from service.intake import Accepting, Receipt, Upload, accept_all
from service.store import documents, idempotency, task_runs
from service.store.database import AsyncStore, Store
from service.store.group_commit import GroupCommit
from service.store.schema import idempotency_keys, utcnow

DEADLINE = 10.0


def upload(content: bytes, name: str = "a.txt") -> Upload:
    return Upload(
        filename=name,
        content_type="text/plain",
        content=content,
        sha256=hashlib.sha256(content).hexdigest(),
        correlation_id=f"c-{name}",
    )


class Gate:
    """An operation's first call waits in the writer thread until the test opens the gate, so
    that what is submitted meanwhile has to wait for the next transaction."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.open = threading.Event()
        self.batches: list[int] = []

    def hold(self, size: int) -> None:
        self.batches.append(size)
        if len(self.batches) == 1:
            self.entered.set()
            assert self.open.wait(DEADLINE), "the test never opened the gate"


async def test_uploads_arriving_during_a_commit_are_accepted_together_each_with_its_receipt(
    async_store: AsyncStore, store: Store
) -> None:
    gate = Gate()

    def gated_accept(connection: Connection, batch: Sequence[Accepting]) -> list[Receipt]:
        gate.hold(len(batch))
        return list(accept_all(connection, batch))

    group: GroupCommit[Accepting, Receipt] = GroupCommit(async_store, gated_accept)
    first = asyncio.create_task(group(Accepting(upload(b"first", "0.txt"), "d-0", "t-0")))
    assert await asyncio.to_thread(gate.entered.wait, DEADLINE)
    # Five more while the first transaction is open; two of them the same bytes as each other.
    contents = [b"one", b"two", b"same", b"same", b"first"]
    rest = [
        asyncio.create_task(group(Accepting(upload(content, f"{n}.txt"), f"d-{n}", f"t-{n}")))
        for n, content in enumerate(contents, start=1)
    ]
    await asyncio.sleep(0)  # let them queue (no timing: the gate holds the first transaction)
    assert not any(task.done() for task in [first, *rest]), "answered before the commit"
    gate.open.set()
    receipts = await asyncio.gather(first, *rest)

    assert gate.batches == [1, 5]
    assert [r.document_id for r in receipts] == [f"d-{n}" for n in range(6)]
    # The earliest copy of the same bytes: stored before, or earlier in the same batch.
    assert [r.duplicate_of for r in receipts] == [None, None, None, None, "d-3", "d-0"]
    for n in range(6):
        assert store.run(documents.get, f"d-{n}") is not None
        run = store.run(task_runs.get, f"t-{n}")
        assert run is not None
        assert (run.state, run.document_id) == ("PENDING", f"d-{n}")
    # A later upload of the same bytes names the first of them, by the index's order too.
    sha256 = documents_sha(store, "d-3")
    assert store.run(documents.earliest_with, [sha256, "0" * 64]) == {sha256: "d-3"}


def documents_sha(store: Store, document_id: str) -> str:
    document = store.run(documents.get, document_id)
    assert document is not None
    return document.sha256


async def test_an_item_that_fails_fails_alone_and_the_rest_of_its_batch_is_committed(
    async_store: AsyncStore,
) -> None:
    gate = Gate()
    committed: list[str] = []

    def operation(connection: Connection, batch: Sequence[str]) -> list[str]:
        gate.hold(len(batch))
        if "bad" in batch:
            raise ValueError("a bug this input triggers")
        committed.extend(batch)
        return [item.upper() for item in batch]

    group: GroupCommit[str, str] = GroupCommit(async_store, operation)
    first = asyncio.create_task(group("first"))
    assert await asyncio.to_thread(gate.entered.wait, DEADLINE)
    rest = [asyncio.create_task(group(item)) for item in ("a", "bad", "b")]
    await asyncio.sleep(0)
    gate.open.set()
    outcomes = await asyncio.gather(first, *rest, return_exceptions=True)

    assert [outcomes[0], outcomes[1], outcomes[3]] == ["FIRST", "A", "B"]
    assert isinstance(outcomes[2], ValueError)
    assert committed == ["first", "a", "b"]
    # The batch of three, then each of its items alone.
    assert gate.batches == [1, 3, 1, 1, 1]


async def test_an_unreachable_store_fails_the_whole_batch_at_once(async_store: AsyncStore) -> None:
    gate = Gate()

    def operation(connection: Connection, batch: Sequence[str]) -> list[str]:
        gate.hold(len(batch))
        if len(gate.batches) > 1:
            raise StoreUnavailable("the store is unavailable: connection refused")
        return list(batch)

    group: GroupCommit[str, str] = GroupCommit(async_store, operation)
    first = asyncio.create_task(group("first"))
    assert await asyncio.to_thread(gate.entered.wait, DEADLINE)
    rest = [asyncio.create_task(group(item)) for item in ("a", "b", "c")]
    await asyncio.sleep(0)
    gate.open.set()
    outcomes = await asyncio.gather(first, *rest, return_exceptions=True)

    assert outcomes[0] == "first"
    assert all(isinstance(outcome, StoreUnavailable) for outcome in outcomes[1:])
    assert gate.batches == [1, 3]  # not tried again item by item


async def test_a_caller_that_stops_waiting_leaves_its_neighbours_answered(
    async_store: AsyncStore,
) -> None:
    gate = Gate()

    def operation(connection: Connection, batch: Sequence[str]) -> list[str]:
        gate.hold(len(batch))
        return list(batch)

    group: GroupCommit[str, str] = GroupCommit(async_store, operation)
    first = asyncio.create_task(group("first"))
    assert await asyncio.to_thread(gate.entered.wait, DEADLINE)
    left = asyncio.create_task(group("left"))
    stays = asyncio.create_task(group("stays"))
    await asyncio.sleep(0)
    first.cancel()  # the caller whose context runs the batch goes away mid-transaction
    left.cancel()
    gate.open.set()

    assert await asyncio.wait_for(stays, DEADLINE) == "stays"
    with pytest.raises(asyncio.CancelledError):
        await first
    assert gate.batches == [
        1,
        2,
    ]  # "left" was written with "stays": its caller only stopped waiting


def keyed(content: bytes, key: str, name: str) -> Upload:
    return msgspec.structs.replace(upload(content, name), idempotency_key=key)


async def test_keyed_uploads_in_one_batch_replay_and_conflict_as_they_would_alone(
    async_store: AsyncStore, store: Store
) -> None:
    gate = Gate()

    def gated_accept(connection: Connection, batch: Sequence[Accepting]) -> list[Receipt]:
        gate.hold(len(batch))
        return accept_all(connection, batch)

    group: GroupCommit[Accepting, Receipt] = GroupCommit(async_store, gated_accept)
    first = asyncio.create_task(group(Accepting(keyed(b"x", "k-used", "0"), "d-0", "t-0")))
    assert await asyncio.to_thread(gate.entered.wait, DEADLINE)
    items = [
        Accepting(keyed(b"y", "k-new", "1"), "d-1", "t-1"),
        Accepting(keyed(b"y", "k-new", "2"), "d-2", "t-2"),  # a retry within the same batch
        Accepting(keyed(b"other", "k-used", "3"), "d-3", "t-3"),  # the key, other bytes
        Accepting(upload(b"z", "4"), "d-4", "t-4"),
    ]
    rest = [asyncio.create_task(group(item)) for item in items]
    await asyncio.sleep(0)
    gate.open.set()
    outcomes = await asyncio.gather(first, *rest, return_exceptions=True)

    assert isinstance(outcomes[3], Conflict)
    receipts = [outcome for outcome in outcomes if isinstance(outcome, Receipt)]
    assert [(r.document_id, r.replayed) for r in receipts] == [
        ("d-0", False),
        ("d-1", False),
        ("d-1", True),
        ("d-4", False),
    ]
    assert gate.batches == [1, 4, 1, 1, 1, 1]  # the conflict sent the batch item by item
    assert store.run(documents.get, "d-2") is None
    assert store.run(documents.get, "d-3") is None
    assert store.run(documents.get, "d-4") is not None


def test_a_batch_claims_free_and_expired_keys_and_replays_taken_ones(store: Store) -> None:
    """One statement claims every key of a batch: a key another upload holds replays it, an
    expired one is taken afresh, and a key twice in the batch names its first upload."""
    store.run(
        accept_all,
        [
            Accepting(keyed(b"a", "k-a", "a"), "d-a", "t-a"),
            Accepting(keyed(b"b", "k-b", "b"), "d-b", "t-b"),
        ],
    )
    store.run(
        lambda connection: connection.execute(
            update(idempotency_keys)
            .where(idempotency_keys.c.key == "k-b")
            .values(created_at=utcnow() - idempotency.WINDOW - timedelta(minutes=1))
        )
    )

    receipts = store.run(
        accept_all,
        [
            Accepting(keyed(b"a", "k-a", "a2"), "d-a2", "t-a2"),
            Accepting(keyed(b"b2", "k-b", "b2"), "d-b2", "t-b2"),
            Accepting(keyed(b"c", "k-c", "c"), "d-c", "t-c"),
            Accepting(keyed(b"c", "k-c", "c2"), "d-c2", "t-c2"),
        ],
    )

    assert [(r.document_id, r.replayed) for r in receipts] == [
        ("d-a", True),
        ("d-b2", False),
        ("d-c", False),
        ("d-c", True),
    ]
    names = store.run(
        lambda connection: dict(
            connection.execute(select(idempotency_keys.c.key, idempotency_keys.c.document_id)).all()
        )
    )
    assert names == {"k-a": "d-a", "k-b": "d-b2", "k-c": "d-c"}
    assert store.run(documents.get, "d-a2") is None
    assert store.run(documents.get, "d-c2") is None


def test_a_key_named_twice_in_one_claim_is_claimed_by_the_first(store: Store) -> None:
    claims = [
        idempotency.Claim("k-twice", "a" * 64, "d-1", "t-1"),
        idempotency.Claim("k-twice", "b" * 64, "d-2", "t-2"),
    ]
    before = utcnow() - idempotency.WINDOW

    assert store.run(idempotency.claim_all, claims, expired_before=before) == {}
    taken = store.run(idempotency.claim_all, claims[1:], expired_before=before)
    assert (taken["k-twice"].document_id, taken["k-twice"].sha256) == ("d-1", "a" * 64)


def test_keys_past_the_window_expire_a_batch_at_a_time(store: Store) -> None:
    claims = [idempotency.Claim(f"k-old-{n}", "c" * 64, f"d-{n}", f"t-{n}") for n in range(3)]
    store.run(idempotency.claim_all, claims, expired_before=utcnow() - idempotency.WINDOW)
    later = utcnow() + timedelta(seconds=1)

    assert store.run(idempotency.expire, later, limit=2) == 2
    assert store.run(idempotency.expire, later, limit=2) == 1
    assert store.run(idempotency.expire, later, limit=2) == 0
