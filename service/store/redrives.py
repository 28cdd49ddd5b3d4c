"""Redrive jobs: many dead letters re-published at a chosen rate, in the background.

A job snapshots the ids it matched when it is created, so progress means something and a restart
neither loses nor repeats it: the runner that owns a job keeps a heartbeat, and a job whose owner
stopped beating is taken over where it stood.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

import msgspec
from sqlalchemy import Connection, func, insert, or_, select, update

from service.store import dead_letters
from service.store.database import as_struct
from service.store.dead_letters import Filters
from service.store.schema import redrive_items, redrives, utcnow

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


def create(connection: Connection, filters: Filters, rate: float) -> Redrive:
    ids = dead_letters.matching_ids(connection, filters)
    now = utcnow()
    redrive_id = str(uuid.uuid4())
    connection.execute(
        insert(redrives).values(
            id=redrive_id,
            filters=msgspec.to_builtins(filters),
            rate=rate,
            state="running",
            matched=len(ids),
            published=0,
            failed=0,
            created_at=now,
            updated_at=now,
        )
    )
    if ids:
        connection.execute(
            insert(redrive_items),
            [
                {"redrive_id": redrive_id, "dead_letter_id": dl, "position": n, "state": "pending"}
                for n, dl in enumerate(ids)
            ],
        )
    job = get(connection, redrive_id)
    assert job is not None
    return job


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


def pending(connection: Connection, redrive_id: str, limit: int) -> list[str]:
    rows = connection.execute(
        select(redrive_items.c.dead_letter_id)
        .where(redrive_items.c.redrive_id == redrive_id, redrive_items.c.state == "pending")
        .order_by(redrive_items.c.position)
        .limit(limit)
    ).scalars()
    return [str(row) for row in rows]


def record_item(
    connection: Connection,
    *,
    redrive_id: str,
    owner: str,
    dead_letter_id: str,
    state: ItemState,
    error: str | None = None,
) -> RedriveState | None:
    """Record one item's outcome and beat the heartbeat; returns the job's state (None if the job
    was taken over by another owner, who must be left alone)."""
    now = utcnow()
    connection.execute(
        update(redrive_items)
        .where(
            redrive_items.c.redrive_id == redrive_id,
            redrive_items.c.dead_letter_id == dead_letter_id,
        )
        .values(state=state, error=error)
    )
    counter = redrives.c.published if state == "published" else redrives.c.failed
    values: dict[str, Any] = {counter.name: counter + 1, "heartbeat_at": now, "updated_at": now}
    if error is not None:
        values["last_error"] = error
    result = connection.execute(
        update(redrives)
        .where(redrives.c.id == redrive_id, redrives.c.owner == owner)
        .values(**values)
    )
    if not result.rowcount:
        return None
    state_now: RedriveState = connection.execute(
        select(redrives.c.state).where(redrives.c.id == redrive_id)
    ).scalar_one()
    return state_now


def finish(connection: Connection, redrive_id: str) -> None:
    now = utcnow()
    connection.execute(
        update(redrives)
        .where(redrives.c.id == redrive_id, redrives.c.state == "running")
        .values(state="finished", finished_at=now, updated_at=now)
    )


def cancel(connection: Connection, redrive_id: str) -> Redrive | None:
    """Ask the job to stop: `cancelling` until its runner has finished the item in hand and
    says `cancelled` (a job nobody runs is taken over and stopped the same way)."""
    now = utcnow()
    connection.execute(
        update(redrives)
        .where(redrives.c.id == redrive_id, redrives.c.state == "running")
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
