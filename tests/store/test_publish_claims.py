"""Documents accepted but never confirmed are published once: by one of the sweeps running at
once (a store outage queues several), or by the API's relay or the sweeper, never both — and a
claimed document whose publish failed is published by a later sweep."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import aio_pika
import pytest
from sqlalchemy import update

from service.errors import BrokerUnavailable, StoreUnavailable, Unconfirmed
from service.intake import Intake, Receipt, Upload
from service.store import dead_letters, documents, leases, schema, task_runs
from service.store.database import AsyncStore, Store
from service.store.documents import Document
from service.task_contract import PROCESS_DOCUMENT
from service.worker.maintenance import reconcile_lost, sweep_unpublished
from service.worker.store_watch import RETURN_HOLD, StoreWatch
from tests.store.test_document_task_writes import start_of
from tests.store.test_documents_and_search import add_document
from tests.support import RecordingPublisher, eventually

SYNC = 10.0
"""Seconds a sweep waits for the other at its first publish before the test fails."""


def after_the_accepts_claim() -> datetime:
    return datetime.now(UTC) + documents.PUBLISH_CLAIM + timedelta(seconds=1)


def test_sweeps_running_at_once_publish_each_document_once(store: Store) -> None:
    accepted = {add_document(store, f"unconfirmed {n}".encode(), f"{n}.txt") for n in range(20)}
    now = after_the_accepts_claim()
    published: list[str] = []
    both_publishing = threading.Barrier(2, timeout=SYNC)
    local = threading.local()

    def publish(document: Document) -> None:
        if not getattr(local, "met", False):  # each sweep has read what it publishes by now
            local.met = True
            both_publishing.wait()
        published.append(document.id)

    def sweep() -> None:
        sweep_unpublished(store, publish, now)

    sweeps = [threading.Thread(target=sweep) for _ in range(2)]
    for thread in sweeps:
        thread.start()
    for thread in sweeps:
        thread.join(SYNC * 2)
    assert not any(thread.is_alive() for thread in sweeps)

    assert Counter(published) == Counter(accepted), "each document published exactly once"
    assert store.run(documents.unpublished, now + documents.PUBLISH_CLAIM, 100) == []


def test_a_claimed_document_whose_publish_failed_is_published_by_a_later_sweep(
    store: Store,
) -> None:
    document_id = add_document(store, b"the broker went away", "away.txt")
    now = after_the_accepts_claim()
    published: list[str] = []

    def refuse(document: Document) -> None:
        raise BrokerUnavailable("RabbitMQ is away")

    with pytest.raises(BrokerUnavailable):
        sweep_unpublished(store, refuse, now)
    stored = store.run(documents.get, document_id)
    assert stored is not None
    assert stored.published_at is None

    assert sweep_unpublished(store, lambda d: published.append(d.id), now) == 0, "still claimed"
    later = now + documents.PUBLISH_CLAIM + timedelta(seconds=1)
    assert sweep_unpublished(store, lambda d: published.append(d.id), later) == 1
    assert sweep_unpublished(store, lambda d: published.append(d.id), later) == 0

    assert published == [document_id]
    stored = store.run(documents.get, document_id)
    assert stored is not None
    assert stored.published_at is not None


def upload(text: str) -> Upload:
    content = text.encode()
    return Upload(
        filename="relayed.txt",
        content_type="text/plain",
        content=content,
        sha256=hashlib.sha256(content).hexdigest(),
        correlation_id=str(uuid.uuid4()),
    )


async def relayed(intake: Intake) -> None:
    """Run the relay until it holds nothing."""
    stop = asyncio.Event()
    running = asyncio.create_task(intake.run(stop))
    intake.wake.set()

    async def drained() -> bool | None:
        return True if not intake.waiting else None

    try:
        await eventually(drained, SYNC, "the relay to empty its list", 0.01)
    finally:
        stop.set()
        await running


async def accepted_while_away(
    async_store: AsyncStore, text: str
) -> tuple[Intake, RecordingPublisher, Receipt]:
    """A document accepted while RabbitMQ refuses: it waits in the relay's list."""
    publisher = RecordingPublisher()
    intake = Intake(async_store, publisher)
    publisher.refusal = BrokerUnavailable("RabbitMQ is away")
    receipt = await intake.submit(upload(text))
    assert not receipt.queued
    return intake, publisher, receipt


async def test_the_relay_leaves_a_document_the_sweeper_claimed(
    store: Store, async_store: AsyncStore
) -> None:
    intake, publisher, receipt = await accepted_while_away(async_store, "accepted meanwhile")
    assert receipt.document_id in intake.waiting
    swept: list[str] = []

    sweep_unpublished(store, lambda d: swept.append(d.id), after_the_accepts_claim())
    publisher.refusal = None
    await relayed(intake)

    assert swept == [receipt.document_id]
    assert publisher.sent == [], "the sweeper published it: the relay does not"


async def test_the_relay_publishes_what_it_accepted_and_the_sweeper_leaves_it(
    store: Store, async_store: AsyncStore
) -> None:
    intake, publisher, _ = await accepted_while_away(async_store, "queued once it is back")
    publisher.refusal = None

    await relayed(intake)  # at once: the accept's claim is the relay's own
    swept: list[str] = []
    sweep_unpublished(store, lambda d: swept.append(d.id), after_the_accepts_claim())

    assert len(publisher.sent) == 1
    assert swept == [], "the relay published it: the sweeper does not"


class LateConfirms(RecordingPublisher):
    """RabbitMQ blocked: each publish is written, its confirm does not come in time (Unconfirmed),
    and it ends when the test settles its `outcomes`."""

    def __init__(self) -> None:
        super().__init__()
        self.outcomes: list[asyncio.Future[None]] = []

    async def publish_settling(self, message: aio_pika.Message, routing_key: str) -> None:
        await self.publish(message, routing_key)
        outcome = asyncio.get_running_loop().create_future()
        self.outcomes.append(outcome)
        raise Unconfirmed("RabbitMQ did not confirm in time", outcome)


def accepted_at(store: Store, document_id: str, at: datetime) -> None:
    """The document as accepted at `at`, its accept's claim unchanged."""
    store.run(
        lambda c: c.execute(
            update(schema.documents)
            .where(schema.documents.c.id == document_id)
            .values(created_at=at, updated_at=at)
        )
    )


async def test_a_publish_waiting_for_its_confirm_keeps_its_claim_and_the_sweeper_leaves_it(
    store: Store, async_store: AsyncStore
) -> None:
    """RabbitMQ blocked past the accept's claim: beat's sweeper published a second message of
    the task while the first still waited for its confirm, and both went in when RabbitMQ read
    again. The API renews the claim while the publish lasts; lost, the relay publishes again."""
    publisher = LateConfirms()
    intake = Intake(async_store, publisher)
    intake.renewal = 0.02
    receipt = await intake.submit(upload("confirmed late"))
    assert not receipt.queued
    accepted = datetime.now(UTC) - documents.PUBLISH_CLAIM + timedelta(seconds=2)
    accepted_at(store, receipt.document_id, accepted)
    stop = asyncio.Event()
    running = asyncio.create_task(intake.run(stop))
    try:

        async def renewed() -> bool | None:
            found = store.run(documents.get, receipt.document_id)
            assert found is not None
            return True if found.updated_at > accepted else None

        await eventually(renewed, SYNC, "the claim to be renewed", 0.01)
        swept: list[str] = []
        past_the_accept = accepted + documents.PUBLISH_CLAIM + timedelta(seconds=5)
        sweep_unpublished(store, lambda d: swept.append(d.id), past_the_accept)
        assert swept == [], "the publish still holds its claim"

        publisher.outcomes[0].set_exception(BrokerUnavailable("lost with its connection"))

        async def published_again() -> bool | None:
            return True if len(publisher.sent) == 2 else None

        await eventually(published_again, SYNC, "the relay to publish it again", 0.01)
        publisher.outcomes[1].set_result(None)  # the relay's, under the claim it had renewed

        async def marked() -> bool | None:
            found = store.run(documents.get, receipt.document_id)
            return True if found is not None and found.published_at is not None else None

        await eventually(marked, SYNC, "its confirm to mark it published", 0.01)
        assert not intake.settling
    finally:
        stop.set()
        await running
    sweep_unpublished(store, lambda d: swept.append(d.id), past_the_accept)
    assert swept == []


def test_a_claim_is_renewed_only_while_it_is_held(store: Store) -> None:
    now = datetime.now(UTC)
    held, taken, published = (
        add_document(store, f"{name}".encode(), f"{name}.txt")
        for name in ("held", "taken", "published")
    )
    for document_id in (held, taken, published):
        accepted_at(store, document_id, now - timedelta(seconds=40))
    assert store.run(documents.claim_to_publish, taken, now)  # lapsed, and taken by a sweep
    store.run(documents.mark_published, published)
    claims: dict[str, datetime | None] = {held: None, taken: None, published: None}

    renewal = now + timedelta(seconds=1)
    assert store.run(documents.renew_claims, claims, renewal) == {held}
    later = renewal + timedelta(seconds=1)
    assert store.run(documents.renew_claims, {held: now}, later) == set(), "not its stamp"
    assert store.run(documents.renew_claims, {held: renewal}, later) == {held}
    assert not store.run(documents.claim_to_publish, held, later + timedelta(seconds=29))
    assert store.run(documents.claim_to_publish, held, later, accepted_here=True, held=later), (
        "the API that renewed it takes it again"
    )


def test_claims_are_renewed_however_many_publishes_wait(store: Store) -> None:
    """RabbitMQ blocked under steady uploads: 70,000 claims in one IN list went past
    PostgreSQL's 65,535 parameters, and no renewal went through again."""
    document_id = add_document(store, b"the last of many", "last.txt")
    held: dict[str, datetime | None] = {f"gone-{n}": None for n in range(70_000)}
    held[document_id] = None

    assert store.run(documents.renew_claims, held, datetime.now(UTC)) == {document_id}


def lost_document(store: Store) -> tuple[str, datetime]:
    """A document accepted and whose task message was confirmed an hour ago, never started, and
    a time before which reconciliation finds it lost."""
    document_id = add_document(store, b"confirmed, then lost", "lost.txt")
    task_id = store.run(documents.get, document_id).task_id  # type: ignore[union-attr]
    store.run(task_runs.record_pending, task_id, PROCESS_DOCUMENT, document_id=document_id)
    now = datetime.now(UTC)
    store.run(
        lambda c: (
            c.execute(
                update(schema.documents)
                .where(schema.documents.c.id == document_id)
                .values(published_at=now - timedelta(hours=1))
            ),
            c.execute(
                update(schema.task_runs)
                .where(schema.task_runs.c.task_id == task_id)
                .values(updated_at=now - timedelta(hours=1, seconds=1))
            ),
        )
    )
    return document_id, now - timedelta(minutes=1)


def test_of_reconciliations_at_once_one_claims_a_lost_document(store: Store) -> None:
    document_id, before = lost_document(store)  # both reconciliations found it lost before this

    assert store.run(documents.claim_reconciled, document_id, before) is not None
    assert store.run(documents.claim_reconciled, document_id, before) is None
    assert store.run(documents.reconciled) == 1


def test_a_reconciliation_whose_publish_failed_is_not_counted_and_is_found_lost_again(
    store: Store,
) -> None:
    """Before, the claim counted the document re-published whether or not the publish went
    through: /metrics' docproc_reconciled_documents grew at each failed attempt."""
    document_id, before = lost_document(store)

    def refused(_: Document) -> None:
        raise BrokerUnavailable("RabbitMQ did not confirm")

    with pytest.raises(BrokerUnavailable):
        reconcile_lost(store, refused, before)

    assert store.run(documents.reconciled) == 0
    assert [d.id for d in store.run(documents.lost, before, 10)] == [document_id]
    published: list[str] = []
    assert reconcile_lost(store, lambda d: published.append(d.id), before) == 1
    assert published == [document_id]
    assert store.run(documents.reconciled) == 1
    assert store.run(documents.lost, before, 10) == [], "claimed: not lost again at once"


class AwayAtFirst:
    """The store, unavailable to the worker's first `away` looks at it."""

    def __init__(self, store: Store, away: int) -> None:
        self.store = store
        self.away = away

    def run(self, operation: Any, *args: Any, **kwargs: Any) -> Any:
        if operation is dead_letters.probe_writable and self.away > 0:
            self.away -= 1
            raise StoreUnavailable("the store is away")
        return self.store.run(operation, *args, **kwargs)


def test_after_a_store_outage_reconciliation_waits_for_the_tasks_that_waited_it_out(
    store: Store,
) -> None:
    """A task that meets the outage waits in the broker's delay queues (up to STORE_WAIT_MAX),
    its run PENDING. Reconciliation, run as the store came back, took each for a task whose
    message was lost and published it again: one message more a document, run twice."""
    document_id, before = lost_document(store)  # as a task still waiting would look
    watch = StoreWatch(SimpleNamespace())
    looking = threading.Thread(
        target=watch._look, args=(SimpleNamespace(store=AwayAtFirst(store, 1), migrated=True),)
    )
    looking.start()
    try:

        async def held() -> datetime | None:
            return store.run(leases.held_until, leases.STORE_RETURNED)

        until = asyncio.run(eventually(held, SYNC, "the worker to see the store back", 0.05))
    finally:
        watch._stop.set()
        looking.join(SYNC)
    assert until > datetime.now(UTC) + RETURN_HOLD - timedelta(seconds=SYNC)
    published: list[str] = []
    assert reconcile_lost(store, lambda d: published.append(d.id), before) == 0
    assert published == []

    store.run(leases.hold, leases.STORE_RETURNED, "another worker", until - timedelta(hours=1))
    assert store.run(leases.held_until, leases.STORE_RETURNED) == until, "the later hold stands"
    store.run(
        lambda c: c.execute(
            update(schema.leases)
            .where(schema.leases.c.name == leases.STORE_RETURNED)
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    )
    assert reconcile_lost(store, lambda d: published.append(d.id), before) == 1
    assert published == [document_id]


def test_a_task_published_again_since_is_not_lost(store: Store) -> None:
    """Its letter re-published (or the task retried by hand) after the marker went out: its
    message waits behind the marker, but the document's `published_at` is the first publish's,
    an hour old — reconciliation published the task again, and counted it lost."""
    document_id, before = lost_document(store)
    document = store.run(documents.get, document_id)
    assert document is not None
    run = store.run(task_runs.get, document.task_id)
    assert run is not None
    store.run(
        task_runs.requeue,
        task_runs.Requeue(
            document.task_id, PROCESS_DOCUMENT, "document_processing", run.updated_at
        ),
    )

    assert store.run(documents.lost, before, 10) == []
    assert store.run(documents.claim_reconciled, document_id, before) is None
    assert store.run(documents.reconciled) == 0


def test_a_task_started_after_reconciliation_read_it_is_not_claimed(store: Store) -> None:
    """`reconcile_lost` reads a batch, then claims and publishes each in turn: a worker that
    started one meanwhile (a long document) got a second message for it, running."""
    document_id, before = lost_document(store)
    [found] = store.run(documents.lost, before, 10)
    store.run(task_runs.record_started, start_of(document_id, found.task_id))

    assert store.run(documents.claim_reconciled, document_id, before) is None
    assert store.run(documents.reconciled) == 0
