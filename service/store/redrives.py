"""Redrive jobs: many dead letters re-published at a chosen rate, in the background.

A job snapshots the ids it matched when it is created, so progress means something and a restart
neither loses nor repeats it: the runner that owns a job keeps a heartbeat, and a job whose owner
stopped beating is taken over where it stood.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

import msgspec
from sqlalchemy import Connection, bindparam, case, func, insert, or_, select, update

from service.errors import Conflict
from service.ids import new_id
from service.store import dead_letters
from service.store.database import Keyed, as_struct
from service.store.dead_letters import Filters
from service.store.schema import dead_letters as dead_letter_table
from service.store.schema import redrive_items, redrives, utcnow

WAITING = "waiting for RabbitMQ"
"""How a job's last error says it waits for RabbitMQ (until one of its letters goes out)."""
RedriveState = Literal["running", "cancelling", "cancelled", "finished"]
ItemState = Literal["pending", "published", "failed"]


class Redrive(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    filters: dict[str, Any]
    rate: float
    state: RedriveState
    matched: int
    published: int
    failed: int
    last_error: str | None
    owner: str | None
    heartbeat_at: datetime | None
    created_at: datetime
    started_at: datetime | None
    updated_at: datetime
    finished_at: datetime | None


def create(
    connection: Connection, filters: Filters, rate: float, *, expected: int | None = None
) -> Redrive:
    """A job over the letters `filters` match now. Each item keeps its letter's `republished_at`
    as read (`seen_republished_at`): a letter re-published, or claimed, after that — by hand, by
    another job, or by this one before it stopped — is not taken again
    (`dead_letters.claim_for_redrive`), whichever host's clock stamped it, and whenever its
    transaction committed. With `expected` (the count the operator confirmed), a Conflict and no
    job when the filters match another number now."""
    now = utcnow()
    matched = dead_letters.matching(connection, filters)
    if expected is not None and len(matched) != expected:
        raise Conflict(dead_letters.not_as_counted(len(matched), expected, "started"))
    redrive_id = new_id()
    connection.execute(
        insert(redrives).values(
            id=redrive_id,
            filters=msgspec.to_builtins(filters),
            rate=rate,
            state="running",
            matched=len(matched),
            published=0,
            failed=0,
            created_at=now,
            updated_at=now,
        )
    )
    if matched:
        connection.execute(
            insert(redrive_items),
            [
                {
                    "redrive_id": redrive_id,
                    "dead_letter_id": dl,
                    "position": n,
                    "state": "pending",
                    "seen_republished_at": seen,
                }
                for n, (dl, seen) in enumerate(matched)
            ],
        )
    job = get(connection, redrive_id)
    assert job is not None
    return job


def seen(connection: Connection, redrive_id: str, ids: Sequence[str]) -> dict[str, datetime | None]:
    """Each of these items' letter's `republished_at` as the job read it (`create`)."""
    rows = connection.execute(
        _SEEN(connection), {"p_redrive_id": redrive_id, "p_ids": sorted(set(ids))}
    )
    return {str(dead_letter_id): at for dead_letter_id, at in rows}


_SEEN = Keyed(
    lambda one_of: select(
        redrive_items.c.dead_letter_id, redrive_items.c.seen_republished_at
    ).where(
        redrive_items.c.redrive_id == bindparam("p_redrive_id"),
        one_of(redrive_items.c.dead_letter_id, "p_ids"),
    )
)


def get(connection: Connection, redrive_id: str) -> Redrive | None:
    row = connection.execute(select(redrives).where(redrives.c.id == redrive_id)).first()
    return None if row is None else as_struct(row, Redrive)


def listing(connection: Connection, limit: int = 50) -> list[Redrive]:
    rows = connection.execute(
        select(redrives).order_by(redrives.c.created_at.desc()).limit(limit)
    ).all()
    return [as_struct(row, Redrive) for row in rows]


def claim(connection: Connection, owner: str, stale_before: datetime) -> Redrive | None:
    """Take one running job that nobody (alive) owns; the caller then owns it."""
    c = redrives.c
    candidate = connection.execute(
        select(c.id)
        .where(
            c.state.in_(("running", "cancelling")),
            or_(c.owner.is_(None), c.owner == owner, c.heartbeat_at < stale_before),
        )
        .order_by(c.created_at)
        .limit(1)
    ).scalar_one_or_none()
    if candidate is None:
        return None
    now = utcnow()
    taken = connection.execute(
        update(redrives)
        .where(
            c.id == candidate,
            c.state.in_(("running", "cancelling")),
            or_(c.owner.is_(None), c.owner == owner, c.heartbeat_at < stale_before),
        )
        .values(
            owner=owner,
            heartbeat_at=now,
            started_at=func.coalesce(c.started_at, now),
            updated_at=now,
        )
    )
    return get(connection, candidate) if taken.rowcount else None


def pending(connection: Connection, redrive_id: str, limit: int) -> list[tuple[str, int]]:
    """The job's next pending letters, in order, each with its body's size in bytes (0 for a
    letter no longer stored): read without the bodies (SQLite and PostgreSQL alike take a blob's
    length from its header)."""
    letters = dead_letter_table.c
    rows = connection.execute(
        select(redrive_items.c.dead_letter_id, func.coalesce(func.length(letters.body), 0))
        .select_from(
            redrive_items.outerjoin(dead_letter_table, letters.id == redrive_items.c.dead_letter_id)
        )
        .where(redrive_items.c.redrive_id == redrive_id, redrive_items.c.state == "pending")
        .order_by(redrive_items.c.position)
        .limit(limit)
    ).all()
    return [(str(dead_letter_id), int(size)) for dead_letter_id, size in rows]


# An item's outcome is written once: only while it is pending. What a job counts is what these
# changed — so a record written again (its commit's answer lost, `AsyncStore.record`), or items
# published twice (a runner that took the job over from one thought dead), count once.
_ITEM = (
    update(redrive_items)
    .where(
        redrive_items.c.redrive_id == bindparam("p_redrive_id"),
        redrive_items.c.dead_letter_id == bindparam("p_dead_letter_id"),
        redrive_items.c.state == "pending",
    )
    .values(state=bindparam("p_state"), error=bindparam("p_error"))
)
# Items published, the common outcome, in one statement with their ids one parameter (a row
# a parameter set cost 30 µs of CPU an item on PostgreSQL); the failed, each with its error, as
# _ITEM.
_PUBLISHED = Keyed(
    lambda one_of: (
        update(redrive_items)
        .where(
            redrive_items.c.redrive_id == bindparam("p_redrive_id"),
            one_of(redrive_items.c.dead_letter_id, "p_ids"),
            redrive_items.c.state == "pending",
        )
        .values(state="published", error=None)
    )
)


class Outcome(msgspec.Struct, frozen=True):
    """What became of one item: published, or failed and why."""

    dead_letter_id: str
    state: ItemState
    error: str | None = None


def record_items(
    connection: Connection,
    *,
    redrive_id: str,
    owner: str,
    outcomes: Sequence[Outcome],
    waiting: str | None = None,
) -> RedriveState | None:
    """Record what became of items this runner re-published — they happened, whoever owns the
    job now — and beat the heartbeat; `waiting` says what the job waits for, as its last error.
    Returns the job's state, or None when another runner took the job over (this one must stop
    and leave it alone)."""
    now = utcnow()
    published: list[str] = []
    changed: dict[str, int] = {"published": 0, "failed": 0}
    errors: list[str] = []
    for outcome in sorted(outcomes, key=lambda outcome: outcome.dead_letter_id):
        if (outcome.state, outcome.error) == ("published", None):
            published.append(outcome.dead_letter_id)
            continue
        parameters = {
            "p_redrive_id": redrive_id,
            "p_dead_letter_id": outcome.dead_letter_id,
            "p_state": outcome.state,
            "p_error": outcome.error,
        }
        if connection.execute(_ITEM, parameters).rowcount:  # one a failure: they are few
            changed[outcome.state] = changed.get(outcome.state, 0) + 1
            if outcome.error is not None:
                errors.append(outcome.error)
    if published:
        changed["published"] += connection.execute(
            _PUBLISHED(connection), {"p_redrive_id": redrive_id, "p_ids": published}
        ).rowcount
    c = redrives.c
    values: dict[str, Any] = {
        "published": c.published + changed["published"],
        "failed": c.failed + changed["failed"],
        "heartbeat_at": case((c.owner == owner, now), else_=c.heartbeat_at),
        "updated_at": now,
    }
    if errors or waiting:
        values["last_error"] = waiting or errors[-1]
    elif changed["published"]:  # RabbitMQ is back: the job waits no more
        values["last_error"] = case((c.last_error.like(f"{WAITING}%"), None), else_=c.last_error)
    connection.execute(update(redrives).where(c.id == redrive_id).values(**values))
    row = connection.execute(select(c.state, c.owner).where(c.id == redrive_id)).one()
    return row.state if row.owner == owner else None


def beat(
    connection: Connection, redrive_id: str, owner: str, *, waiting: str | None = None
) -> RedriveState | None:
    """The owner is alive (between two letters of a slow job, or waiting for RabbitMQ):
    `record_items` with nothing to record."""
    return record_items(
        connection, redrive_id=redrive_id, owner=owner, outcomes=(), waiting=waiting
    )


def finish(connection: Connection, redrive_id: str) -> None:
    now = utcnow()
    connection.execute(
        update(redrives)
        .where(redrives.c.id == redrive_id, redrives.c.state == "running")
        .values(state="finished", finished_at=now, updated_at=now)
    )


def cancel(connection: Connection, redrive_id: str) -> Redrive | None:
    """Stop the job: at once if no runner ever took it (it waits its turn behind another job:
    each runner holds one at a time, and a slow job may take hours); else `cancelling` until its
    runner has finished the item in hand and says `cancelled` (a job whose runner died is taken
    over and stopped the same way). Of a cancel and a runner's claim at once, one wins: the
    other's UPDATE finds the row changed."""
    now = utcnow()
    c = redrives.c
    connection.execute(
        update(redrives)
        .where(c.id == redrive_id, c.state == "running", c.owner.is_(None))
        .values(state="cancelled", finished_at=now, updated_at=now)
    )
    connection.execute(
        update(redrives)
        .where(c.id == redrive_id, c.state == "running")
        .values(state="cancelling", updated_at=now)
    )
    return get(connection, redrive_id)


def stopped(connection: Connection, redrive_id: str) -> None:
    """The runner stopped a job that was asked to stop."""
    now = utcnow()
    connection.execute(
        update(redrives)
        .where(redrives.c.id == redrive_id, redrives.c.state == "cancelling")
        .values(state="cancelled", finished_at=now, updated_at=now)
    )


def item_counts(connection: Connection) -> dict[str, int]:
    """Dead letters re-published and failed, over every redrive job kept."""
    published, failed = connection.execute(
        select(
            func.coalesce(func.sum(redrives.c.published), 0),
            func.coalesce(func.sum(redrives.c.failed), 0),
        )
    ).one()
    return {"published": int(published), "failed": int(failed)}
