"""Keyset cursors for lists newest first: a page ends at a (time, id), and the next one starts
just before it — an index walk, whatever the table's size (never OFFSET)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, or_


def encode(moment: datetime, row_id: str) -> str:
    return base64.urlsafe_b64encode(f"{moment.isoformat()}|{row_id}".encode()).decode()


def decode(cursor: str) -> tuple[datetime, str] | None:
    """Where a page ends, from its `next_cursor`; None for text this API did not give out."""
    try:
        moment_text, row_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
        moment = datetime.fromisoformat(moment_text)
        # In UTC, as the store compares it: a time at the edge of the calendar in another zone
        # (0001-01-01T00:00+14:00) is none, which the store would answer with an error.
        in_utc = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except (ValueError, UnicodeDecodeError, OverflowError):
        return None
    if not row_id.isprintable() or len(row_id) > 255:  # no id the store gave out: a NUL (which
        return None  # PostgreSQL refuses outright), a control character, a text past a key
    return in_utc, row_id


def before(time_column: Any, id_column: Any, cursor: str) -> ColumnElement[bool]:
    """Rows after `cursor` in newest-first order (ValueError for a cursor not ours)."""
    after = decode(cursor)
    if after is None:
        raise ValueError(f"not a cursor this API gave out: {cursor!r}")
    moment, row_id = after
    return or_(time_column < moment, and_(time_column == moment, id_column < row_id))
