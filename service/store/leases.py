"""Leases: one holder of a named role at a time, for as long as it keeps renewing.

The DLQ consumer holds one: its ledger (store.ledger) is only right when a single consumer takes
what RabbitMQ returns. A holder that stops renewing (killed, cut off) loses the lease once it
expires, and a standby takes it over.

A hold (`hold`, `held_until`) is a lease no one renews: a time until which something waits, as
reconciliation after a store outage (`STORE_RETURNED`).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Connection, case, delete, literal, or_, select, update

from service.store.database import dialect_insert
from service.store.schema import leases, utcnow


def acquire(connection: Connection, name: str, owner: str, ttl: float) -> bool:
    """Take or renew the lease `name` for `owner`; False while someone else holds it."""
    now = utcnow()
    expires = now + timedelta(seconds=ttl)
    created = connection.execute(
        dialect_insert(connection, leases)
        .values(name=name, owner=owner, expires_at=expires)
        .on_conflict_do_nothing(index_elements=["name"])
        .returning(leases.c.name)  # rowcount is -1 here on PostgreSQL (psycopg)
    ).first()
    if created is not None:
        return True
    taken = connection.execute(
        update(leases)
        .where(leases.c.name == name, or_(leases.c.owner == owner, leases.c.expires_at < now))
        .values(owner=owner, expires_at=expires)
    ).rowcount
    return bool(taken)


def holder(connection: Connection, name: str) -> str | None:
    """Who holds `name` now, if anyone does."""
    found = connection.execute(
        select(leases.c.owner).where(leases.c.name == name, leases.c.expires_at >= utcnow())
    ).scalar_one_or_none()
    return None if found is None else str(found)


def last_holder(connection: Connection, name: str) -> str | None:
    """Who holds `name`, or held it last if its lease lapsed; None when it was given back."""
    found = connection.execute(select(leases.c.owner).where(leases.c.name == name)).scalar()
    return None if found is None else str(found)


def take_over(connection: Connection, name: str, owner: str, previous: str, ttl: float) -> bool:
    """Take `name` from `previous`, known to be gone (its process no longer exists)."""
    taken = connection.execute(
        update(leases)
        .where(leases.c.name == name, leases.c.owner == previous)
        .values(owner=owner, expires_at=utcnow() + timedelta(seconds=ttl))
    ).rowcount
    return bool(taken)


def holds(connection: Connection, name: str, owner: str) -> bool:
    """Whether `owner` holds `name` now (checked inside a transaction that depends on it)."""
    found = connection.execute(
        select(leases.c.owner).where(
            leases.c.name == name, leases.c.owner == owner, leases.c.expires_at >= utcnow()
        )
    ).first()
    return found is not None


def release(connection: Connection, name: str, owner: str) -> None:
    connection.execute(delete(leases).where(leases.c.name == name, leases.c.owner == owner))


STORE_RETURNED = "store-returned"
"""Held for a while after the store came back from an outage (service.worker.store_watch): tasks
that waited it out are still coming back from the broker's delay queues, PENDING meanwhile, and
reconciliation must not take them for lost."""


def hold(connection: Connection, name: str, owner: str, until: datetime) -> None:
    """Hold `name` until `until` at least: a later hold already there stands."""
    at = literal(until, leases.c.expires_at.type)
    later = leases.c.expires_at > at
    connection.execute(
        dialect_insert(connection, leases)
        .values(name=name, owner=owner, expires_at=until)
        .on_conflict_do_update(
            index_elements=["name"],
            set_={
                "owner": case((later, leases.c.owner), else_=literal(owner)),
                "expires_at": case((later, leases.c.expires_at), else_=at),
            },
        )
    )


def held_until(connection: Connection, name: str) -> datetime | None:
    """Until when `name` is held, if it is held now."""
    found: datetime | None = connection.execute(
        select(leases.c.expires_at).where(leases.c.name == name, leases.c.expires_at >= utcnow())
    ).scalar_one_or_none()
    return found
