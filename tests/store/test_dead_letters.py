from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update

from service.deadletters.consumer import store_batch
from service.deadletters.parsing import RawMessage
from service.store import dead_letters
from service.store.database import Store
from service.store.dead_letters import Filters
from service.store.schema import dead_letters as table


def message(n: int, died: datetime, *, redelivered: bool = False) -> RawMessage:
    headers: dict[str, Any] = {
        "task": "docproc.document.process",
        "id": f"t-{n}",
        "x-death": [
            {"count": 1, "reason": "rejected", "queue": "document_processing", "time": died}
        ],
    }
    return RawMessage(
        body=f'[[], {{"n": {n}}}, {{}}]'.encode(),
        headers=headers,
        properties={"content_type": "application/json"},
        redelivered=redelivered,
    )


def count(store: Store) -> int:
    return int(store.run(lambda c: c.execute(select(func.count()).select_from(table)).scalar_one()))


def test_retention_purges_old_letters_and_handled_ones_sooner(store: Store) -> None:
    now = datetime.now(UTC)
    ids = [
        record_id for record_id, _ in store.run(store_batch, [message(n, now) for n in range(4)])
    ]
    old, republished, discarded, fresh = ids
    store.run(
        lambda c: c.execute(
            update(table).where(table.c.id == old).values(dead_at=now - timedelta(days=20))
        )
    )
    store.run(dead_letters.mark_republished, republished)
    store.run(dead_letters.discard, discarded)
    store.run(
        lambda c: c.execute(
            update(table)
            .where(table.c.id.in_([republished, discarded]))
            .values(republished_at=now - timedelta(days=4), discarded_at=now - timedelta(days=4))
        )
    )
    store.run(
        lambda c: c.execute(
            update(table).where(table.c.id == republished).values(discarded_at=None)
        )
    )

    purged = store.run(
        dead_letters.purge,
        dead_before=now - timedelta(days=14),
        handled_before=now - timedelta(days=3),
    )

    assert purged == 3
    remaining = store.run(dead_letters.page, Filters(status="all"), limit=10).items
    assert [letter.id for letter in remaining] == [fresh]


def test_counts_by_reason_and_queue_leave_out_discarded_letters(store: Store) -> None:
    now = datetime.now(UTC)
    ids = [
        record_id for record_id, _ in store.run(store_batch, [message(n, now) for n in range(3)])
    ]
    store.run(dead_letters.discard, ids[0])

    assert store.run(dead_letters.counts) == [("rejected", "document_processing", 2)]


def test_a_redrive_belongs_to_one_runner_until_its_heartbeat_stops(store: Store) -> None:
    from service.store import redrives

    store.run(store_batch, [message(n, datetime.now(UTC)) for n in range(3)])
    job = store.run(redrives.create, Filters(), 10.0)
    now = datetime.now(UTC)

    mine = store.run(redrives.claim, "api-1", now - timedelta(seconds=15))
    theirs = store.run(redrives.claim, "api-2", now - timedelta(seconds=15))
    taken_over = store.run(redrives.claim, "api-2", now + timedelta(seconds=1))

    assert mine is not None
    assert mine.id == job.id
    assert theirs is None, "a live owner keeps its job"
    assert taken_over is not None
    assert taken_over.owner == "api-2", "a silent owner's job is taken over"
