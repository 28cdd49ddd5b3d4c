"""Idempotency keys: a client's `Idempotency-Key` names one upload for a day."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import msgspec
from sqlalchemy import Connection, Table, bindparam, delete, select

from service.store.database import PerDialect, as_struct
from service.store.schema import idempotency_keys, utcnow

WINDOW = timedelta(hours=24)
"""How long a key names its upload."""


class KeyUse(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    sha256: str
    document_id: str
    task_id: str
    created_at: datetime


def _build_claim(insert_for: Callable[[Table], Any]) -> Any:
    statement = insert_for(idempotency_keys)
    return statement.on_conflict_do_update(
        index_elements=["key"],
        set_={
            "sha256": statement.excluded.sha256,
            "document_id": statement.excluded.document_id,
            "task_id": statement.excluded.task_id,
            "created_at": statement.excluded.created_at,
        },
        where=idempotency_keys.c.created_at < bindparam("expired_before"),
    ).returning(idempotency_keys.c.key)


_CLAIM = PerDialect(_build_claim)
_USE = select(idempotency_keys).where(idempotency_keys.c.key == bindparam("key"))


def claim(
    connection: Connection,
    key: str,
    *,
    sha256: str,
    document_id: str,
    task_id: str,
    expired_before: datetime,
) -> KeyUse | None:
    """Take `key` for this upload: None when it was free (or its last use expired), else the
    upload it already names (committed by another request, perhaps a moment ago)."""
    taken = connection.execute(
        _CLAIM(connection),
        {
            "key": key,
            "sha256": sha256,
            "document_id": document_id,
            "task_id": task_id,
            "created_at": utcnow(),
            "expired_before": expired_before,
        },
    ).first()
    if taken is not None:
        return None
    return as_struct(connection.execute(_USE, {"key": key}).one(), KeyUse)


def expire(connection: Connection, before: datetime) -> int:
    result = connection.execute(
        delete(idempotency_keys).where(idempotency_keys.c.created_at < before)
    )
    return int(result.rowcount or 0)
