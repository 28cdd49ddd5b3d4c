"""The DLQ consumer's ledger: dead letters it committed but may not have acked.

Two identical messages cannot be told apart by content, and a message redelivered after a crash
is marked redelivered whether or not it was committed. So the consumer writes, in the transaction
that stores a batch, one row per record of the batch; it deletes them once RabbitMQ has processed
the batch's ack. A redelivered message whose key has a row is one of those records coming back:
it takes the row (and is not stored again). RabbitMQ delivers returned messages before any fresh
one, so when a fresh message arrives, rows still unmatched belong to acks that did go through:
they are stale and go. See deadletters.consumer for the protocol around it.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from sqlalchemy import Connection, delete, select

from service.store.database import Bulk, Keyed
from service.store.schema import dead_letter_ledger as ledger

_MATCHING = Keyed(
    lambda one_of: (
        select(ledger.c.session, ledger.c.dead_letter_id, ledger.c.message_key)
        .where(one_of(ledger.c.message_key, "keys"))
        .order_by(ledger.c.dead_letter_id)
    )
)


def take(connection: Connection, keys: Sequence[str]) -> list[str | None]:
    """For each key (a redelivered message's), the record of a committed, unacked message with
    that key — its row taken so that it matches once — or None."""
    if not keys:
        return []
    rows = connection.execute(_MATCHING(connection), {"keys": list(set(keys))}).all()
    available: dict[str, list[tuple[str, str]]] = {}
    for row in rows:
        available.setdefault(row.message_key, []).append((row.session, row.dead_letter_id))
    matched: list[str | None] = []
    taken: list[tuple[str, str]] = []
    for key in keys:
        candidates = available.get(key)
        if candidates:
            session, record_id = candidates.pop()
            taken.append((session, record_id))
            matched.append(record_id)
        else:
            matched.append(None)
    for session, record_id in taken:
        connection.execute(
            delete(ledger).where(ledger.c.session == session, ledger.c.dead_letter_id == record_id)
        )
    return matched


_RECORD = Bulk(lambda insert: insert(ledger), ["session", "dead_letter_id", "message_key"])


def record(connection: Connection, session: str, rows: Sequence[tuple[str, str]]) -> None:
    """Rows (record id, message key) for a batch committed but not acked yet."""
    _RECORD.execute(connection, [(session, record_id, key) for record_id, key in rows])


def clear(connection: Connection, session: str | None = None) -> int:
    """Drop the rows of one session (its ack went through), or every row (all are stale)."""
    statement = delete(ledger)
    if session is not None:
        statement = statement.where(ledger.c.session == session)
    return int(connection.execute(statement).rowcount or 0)


def clear_others(connection: Connection, session: str) -> int:
    """Drop every row but this session's: left by earlier sessions, and proven stale."""
    return int(connection.execute(delete(ledger).where(ledger.c.session != session)).rowcount or 0)


def size(connection: Connection) -> int:
    return len(connection.execute(select(ledger.c.dead_letter_id)).all())


def left_by_others(connection: Connection, books: Collection[str]) -> bool:
    """Whether rows other than `books`' are in the ledger (left by another process)."""
    statement = select(ledger.c.session).limit(1)
    if books:
        statement = statement.where(ledger.c.session.not_in(list(books)))
    return connection.execute(statement).first() is not None
