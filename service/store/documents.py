"""Documents: the original bytes as accepted, then the extracted text and chunks that make them
searchable. A document is processed once: a redelivery, or a duplicate message, adds nothing."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import msgspec
from sqlalchemy import (
    ARRAY,
    ColumnElement,
    Connection,
    Integer,
    Row,
    Select,
    String,
    Text,
    and_,
    bindparam,
    column,
    exists,
    func,
    insert,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert

from service.pipeline.models import Chunk
from service.store import cursors
from service.store.database import ByDialectName, Keyed, PerDialect, as_struct
from service.store.schema import chunks, document_texts, documents, task_runs, utcnow


class Document(msgspec.Struct, frozen=True, kw_only=True):
    """A document's metadata (its bytes are read on their own, by the worker)."""

    id: str
    filename: str
    content_type: str | None
    detected_type: str | None
    size: int
    sha256: str
    title: str | None
    author: str | None
    authored_at: datetime | None
    modified_at: datetime | None
    language: str | None
    encoding: str | None
    page_count: int | None
    char_count: int | None
    chunk_count: int | None
    task_id: str
    correlation_id: str | None
    created_at: datetime
    updated_at: datetime
    processed_at: datetime | None
    published_at: datetime | None


class Upload(msgspec.Struct, frozen=True, kw_only=True):
    """What the worker needs to process a document."""

    id: str
    filename: str
    content: bytes
    processed: bool
    refused: str | None = None
    """The state of the task's run when this delivery is a copy that does not start it
    (`task_runs.STARTED`): FAILURE or DEAD, it ended; STARTED, PROCESSING or RETRY, another
    delivery is at work on it."""


class Extraction(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of processing one document, stored in one transaction."""

    detected_type: str
    title: str | None
    encoding: str | None
    page_count: int | None
    text: str
    chunks: Sequence[Chunk]
    author: str | None = None
    authored_at: datetime | None = None
    modified_at: datetime | None = None
    language: str | None = None


_METADATA = [column for column in documents.c if column.name != "content"]


_INSERT = insert(documents)
# One statement, the ids one parameter (an array on PostgreSQL): as executemany, a row a
# parameter set cost 30 µs of CPU a document on PostgreSQL and 10-12 on SQLite, against 13 and 3-5.
MARK_PUBLISHED = Keyed(
    lambda one_of: (
        update(documents)
        .where(one_of(documents.c.id, "p_ids"), documents.c.published_at.is_(None))
        .values(published_at=bindparam("p_at"))
    )
)
# Statements of the upload's path are built once: building one costs more than running it.


class NewDocument(msgspec.Struct, frozen=True, kw_only=True):
    """A document as it is accepted."""

    id: str
    filename: str
    content_type: str | None
    content: bytes
    sha256: str
    task_id: str
    correlation_id: str | None


def insert_documents(connection: Connection, new: Sequence[NewDocument]) -> None:
    """Accepted documents, in one statement however many (their times in the order given)."""
    rows = []
    for document in new:
        now = utcnow()
        rows.append(
            {
                "id": document.id,
                "filename": document.filename,
                "content_type": document.content_type,
                "size": len(document.content),
                "sha256": document.sha256,
                "content": document.content,
                "task_id": document.task_id,
                "correlation_id": document.correlation_id,
                "created_at": now,
                "updated_at": now,
            }
        )
    if rows:
        connection.execute(_INSERT, rows)


def earliest_with(connection: Connection, sha256s: Collection[str]) -> dict[str, str]:
    """Content (its SHA-256) → the earliest document with it, for the contents stored: one
    statement for a batch of uploads, where one a content was a round trip each on PostgreSQL
    (~110 µs of the API's CPU an upload)."""
    if not sha256s:
        return {}
    keys = list(sha256s)
    given = keys if connection.dialect.name == "postgresql" else msgspec.json.encode(keys).decode()
    rows = connection.execute(_EARLIEST(connection), {"sha256s": given}).all()
    return {str(sha256): str(found) for sha256, found in rows if found is not None}


def _earliest(dialect: str) -> Select[Any]:
    """For each content of a list bound as one parameter (an array on PostgreSQL, JSON text on
    SQLite), the earliest document with it: a lookup per content on ix_documents_sha256, never
    a read of every copy of a content."""
    if dialect == "postgresql":
        listed = (
            func.unnest(bindparam("sha256s", type_=ARRAY(String())))
            .table_valued("value")
            .render_derived()
        )
    else:
        listed = func.json_each(bindparam("sha256s")).table_valued("value")
    earliest = (
        select(documents.c.id)
        .where(documents.c.sha256 == listed.c.value)
        .order_by(documents.c.created_at, documents.c.id)
        .limit(1)
        .scalar_subquery()
    )
    return select(listed.c.value, earliest)


_EARLIEST = ByDialectName(_earliest)


def published_values(document_ids: Collection[str], now: datetime) -> dict[str, Any]:
    """`MARK_PUBLISHED`'s parameters."""
    return {"p_ids": sorted(set(document_ids)), "p_at": now}


def mark_published(connection: Connection, *document_ids: str) -> None:
    """Their task messages are in the broker: beat's sweeper leaves them alone."""
    if document_ids:
        connection.execute(MARK_PUBLISHED(connection), published_values(document_ids, utcnow()))


PUBLISH_CLAIM = timedelta(seconds=30)
"""How long a claim to publish a document's task holds: longer than the API's confirm timeout.

Whoever publishes a task message that was not confirmed at once — beat's sweeper, the API's
relay — first claims its document (`claim_to_publish`): one UPDATE of `updated_at`, taken by
one of them only, while `published_at` stays NULL until the message is confirmed. The accept
itself is the API's claim (`updated_at` = `created_at`). A publish whose confirm is late keeps
its claim while it lasts (`renew_claims`, by the API that waits for it). A claim whose publisher
failed or died expires, and the document is claimed and published again: nothing accepted is
lost."""


def unpublished(connection: Connection, claimed_before: datetime, limit: int) -> list[Document]:
    """Documents whose task message was never confirmed and whose claim (the accept's, or a
    publisher's) is older than `claimed_before`: those a sweeper may claim."""
    rows = connection.execute(
        select(*_METADATA)
        .where(documents.c.published_at.is_(None), documents.c.updated_at < claimed_before)
        .order_by(documents.c.created_at)
        .limit(limit)
    ).all()
    return [as_struct(row, Document) for row in rows]


_CLAIM_TO_PUBLISH = update(documents).values(updated_at=bindparam("p_at"))
_UNPUBLISHED = (documents.c.id == bindparam("p_id"), documents.c.published_at.is_(None))
_EXPIRED = documents.c.updated_at < bindparam("p_expired")
_SWEEPER_CLAIM = _CLAIM_TO_PUBLISH.where(*_UNPUBLISHED, _EXPIRED)


# The API's relay also takes over its own claims still held: the accept's, and the one it
# renewed while a publish of the document waited for its confirm (`p_held`).
_RELAY_CLAIM = _CLAIM_TO_PUBLISH.where(
    *_UNPUBLISHED,
    or_(
        _EXPIRED,
        documents.c.updated_at == documents.c.created_at,
        documents.c.updated_at == bindparam("p_held"),
    ),
)


def claim_to_publish(
    connection: Connection,
    document_id: str,
    now: datetime,
    *,
    accepted_here: bool = False,
    held: datetime | None = None,
) -> bool:
    """True when the caller may publish the document's task, until `now` + PUBLISH_CLAIM: it is
    unpublished and no one else holds a claim on it (the API that accepted it holds one since
    the accept, `accepted_here`, and the one it renewed last, `held`). Of publishers claiming at
    once, one wins (the UPDATE rechecks the row it waited for, on PostgreSQL; SQLite has one
    writer)."""
    values = {"p_id": document_id, "p_at": now, "p_expired": now - PUBLISH_CLAIM}
    if not accepted_here:
        return bool(connection.execute(_SWEEPER_CLAIM, values).rowcount)
    return bool(connection.execute(_RELAY_CLAIM, values | {"p_held": held}).rowcount)


CLAIM_RENEWAL = timedelta(seconds=10)
"""How often a claim is renewed while its publish waits for a confirm: well within
PUBLISH_CLAIM, so that a renewal late by a store's hiccup still comes before it lapses."""


def renew_claims(
    connection: Connection, held: Mapping[str, datetime | None], now: datetime
) -> set[str]:
    """Stamp `now` on the claims still held — each document's, as last stamped (`held`; None for
    the accept's) — and answer the documents renewed: not those published meanwhile, nor those
    whose claim lapsed and was taken by another publisher.

    A publish whose confirm is late (RabbitMQ blocked) may end confirmed minutes later. While it
    waits, its claim must hold: lapsed, beat's sweeper published a second message of the task.
    One UPDATE for each stamp (after the first renewal, all that are renewed together share
    one), its ids one parameter (`Keyed`): an IN list of them went past PostgreSQL's 65,535
    parameters when RabbitMQ stayed blocked under steady uploads, and no renewal went through.
    """
    by_stamp: dict[datetime | None, list[str]] = {}
    for document_id, stamp in held.items():
        by_stamp.setdefault(stamp, []).append(document_id)
    renewed: set[str] = set()
    for stamp, document_ids in by_stamp.items():
        values = {"p_ids": document_ids, "p_held": stamp, "p_at": now}
        renewed.update(connection.execute(_RENEW(connection), values).scalars())
    return renewed


_STILL_HELD = or_(
    documents.c.updated_at == bindparam("p_held", type_=documents.c.updated_at.type),
    and_(bindparam("p_held").is_(None), documents.c.updated_at == documents.c.created_at),
)
_RENEW = Keyed(
    lambda one_of: (
        update(documents)
        .where(one_of(documents.c.id, "p_ids"), documents.c.published_at.is_(None), _STILL_HELD)
        .values(updated_at=bindparam("p_at"))
        .returning(documents.c.id)
    )
)


def release_claim(connection: Connection, document_id: str, claimed_at: datetime) -> None:
    """Give back a claim whose publish failed, to the accept's: the API's relay may take it
    again at once, and anyone else once the accept's has expired."""
    connection.execute(
        update(documents)
        .where(*_UNPUBLISHED, documents.c.updated_at == bindparam("p_at"))
        .values(updated_at=documents.c.created_at),
        {"p_id": document_id, "p_at": claimed_at},
    )


def _waiting_since_before(published_before: datetime) -> ColumnElement[bool]:
    """The document's run is PENDING, and has been since before `published_before`: its message
    went out before then. A run made PENDING again later — its letter re-published, its task
    retried by hand — has a message of that time, behind the marker's: `published_at` is the
    first publish's, and such a task was published again (and counted lost) while its message
    waited in the queue."""
    return exists().where(
        task_runs.c.task_id == documents.c.task_id,
        task_runs.c.state == "PENDING",
        task_runs.c.updated_at < published_before,
    )


def lost(connection: Connection, published_before: datetime, limit: int) -> list[Document]:
    """Documents whose task message was confirmed before `published_before` and never started."""
    rows = connection.execute(
        select(*_METADATA)
        .where(
            documents.c.published_at < published_before,
            documents.c.processed_at.is_(None),
            _waiting_since_before(published_before),
        )
        .order_by(documents.c.published_at)
        .limit(limit)
    ).all()
    return [as_struct(row, Document) for row in rows]


def claim_reconciled(
    connection: Connection, document_id: str, published_before: datetime
) -> datetime | None:
    """Claim a document `lost` found (with `published_before`) to publish its task again,
    counted: the claim's time (its new `published_at`), or None when another reconciliation
    claimed it first, or its task started (or was published again) since `lost` read it — a
    worker started it while the documents read before it went out. A publish that then fails
    gives the claim back (`release_reconciled`)."""
    now = utcnow()
    claimed = connection.execute(
        update(documents)
        .where(
            documents.c.id == document_id,
            documents.c.published_at < published_before,
            documents.c.processed_at.is_(None),
            _waiting_since_before(published_before),
        )
        .values(
            reconciled_count=documents.c.reconciled_count + 1,
            reconciled_at=now,
            published_at=now,
            updated_at=now,
        )
    )
    return now if claimed.rowcount else None


def release_reconciled(
    connection: Connection, document_id: str, claimed_at: datetime, published_at: datetime | None
) -> None:
    """Give back a reconciliation's claim whose publish failed: not counted, and its
    `published_at` as before, so that the next reconciliation finds the document lost again."""
    connection.execute(
        update(documents)
        .where(documents.c.id == document_id, documents.c.published_at == claimed_at)
        .values(
            reconciled_count=documents.c.reconciled_count - 1,
            published_at=published_at,
        )
    )


def reconciled(connection: Connection) -> int:
    """How often reconciliation re-published a lost task message, in all."""
    total = connection.execute(select(func.sum(documents.c.reconciled_count))).scalar_one()
    return int(total or 0)


def get(connection: Connection, document_id: str) -> Document | None:
    row = connection.execute(select(*_METADATA).where(documents.c.id == document_id)).first()
    return None if row is None else as_struct(row, Document)


UPLOAD = select(
    documents.c.id, documents.c.filename, documents.c.content, documents.c.processed_at
).where(documents.c.id == bindparam("p_id"))
"""The document's upload, its id bound as `p_id`; read as `upload_of`."""


def upload_of(row: Row[*tuple[Any, ...]] | None, refused: str | None = None) -> Upload | None:
    if row is None:
        return None
    return Upload(
        id=row.id,
        filename=row.filename,
        content=row.content,
        processed=row.processed_at is not None,
        refused=refused,
    )


def get_upload(connection: Connection, document_id: str) -> Upload | None:
    return upload_of(connection.execute(UPLOAD, {"p_id": document_id}).first())


def get_text(connection: Connection, document_id: str) -> str | None:
    text: str | None = connection.execute(
        select(document_texts.c.text).where(document_texts.c.document_id == document_id)
    ).scalar_one_or_none()
    return text


class AlreadyProcessed(Exception):
    """Another delivery of the same task committed the document's outcome first."""


_CLAIMED = (
    "detected_type",
    "title",
    "author",
    "authored_at",
    "modified_at",
    "language",
    "encoding",
    "page_count",
    "char_count",
    "chunk_count",
    "processed_at",
    "updated_at",
)
# Parameters are named `p_…` here and in every statement that can be part of another: SQLAlchemy
# takes a parameter named as a column for a value to SET, in every UPDATE of the statement.
_CLAIM = (
    update(documents)
    .where(documents.c.id == bindparam("p_id"), documents.c.processed_at.is_(None))
    .values({name: bindparam(f"p_{name}") for name in _CLAIMED})
)
_INSERT_CHUNKS = insert(chunks)
_TEXT = PerDialect(
    lambda insert_for: (statement := insert_for(document_texts)).on_conflict_do_update(
        index_elements=["document_id"], set_={"text": statement.excluded.text}
    )
)


def _claim_values(document_id: str, extraction: Extraction, now: datetime) -> dict[str, Any]:
    return {
        "p_id": document_id,
        "p_detected_type": extraction.detected_type,
        "p_title": extraction.title,
        "p_author": extraction.author,
        "p_authored_at": extraction.authored_at,
        "p_modified_at": extraction.modified_at,
        "p_language": extraction.language,
        "p_encoding": extraction.encoding,
        "p_page_count": extraction.page_count,
        "p_char_count": len(extraction.text),
        "p_chunk_count": len(extraction.chunks),
        "p_processed_at": now,
        "p_updated_at": now,
    }


def store_extraction(connection: Connection, document_id: str, extraction: Extraction) -> None:
    """Record what was found and the document's text and chunks, atomically — once: when two
    deliveries of one task race, the second raises AlreadyProcessed and changes nothing."""
    claimed = connection.execute(_CLAIM, _claim_values(document_id, extraction, utcnow())).rowcount
    if not claimed:
        raise AlreadyProcessed(document_id)
    # No chunks to drop first: they are written only here, with the claim, and a document
    # claimed once is never claimed again (a DELETE that found nothing was a round trip each
    # document on PostgreSQL).
    connection.execute(_TEXT(connection), {"document_id": document_id, "text": extraction.text})
    if extraction.chunks:
        connection.execute(
            _INSERT_CHUNKS,
            [
                {
                    "document_id": document_id,
                    "position": chunk.position,
                    "start_offset": chunk.start,
                    "end_offset": chunk.end,
                    "content": chunk.text,
                }
                for chunk in extraction.chunks
            ],
        )


def _stored() -> Select[int]:
    """`store_extraction` as one statement, for PostgreSQL: the claim, then the text and the
    chunks of the document it claimed (none when it claimed nothing), each a CTE; it answers
    1 when it claimed the document, 0 when another delivery had."""
    claimed = _CLAIM.returning(documents.c.id).cte("claimed")
    text = postgresql_insert(document_texts).from_select(
        ["document_id", "text"], select(claimed.c.id, bindparam("p_text", type_=Text))
    )
    text = text.on_conflict_do_update(
        index_elements=["document_id"], set_={"text": text.excluded.text}
    )
    rows = (
        func.unnest(
            bindparam("p_positions", type_=ARRAY(Integer)),
            bindparam("p_starts", type_=ARRAY(Integer)),
            bindparam("p_ends", type_=ARRAY(Integer)),
            bindparam("p_contents", type_=ARRAY(Text)),
        )
        .table_valued(
            column("position", Integer),
            column("start_offset", Integer),
            column("end_offset", Integer),
            column("content", Text),
        )
        .render_derived()
    )
    new_chunks = insert(chunks).from_select(
        ["document_id", "position", "start_offset", "end_offset", "content"],
        select(claimed.c.id, *rows.c).select_from(claimed).join(rows, true()),
    )
    return (
        select(func.count())
        .select_from(claimed)
        .add_cte(text.cte("stored_text"), new_chunks.cte("stored_chunks"))
    )


STORED = _stored()
"""`store_extraction` in one statement on PostgreSQL (`stored_values`): 1 when it claimed the
document. A statement of which others are made (service.store.outcomes)."""


def stored_values(document_id: str, extraction: Extraction, now: datetime) -> dict[str, Any]:
    """`STORED`'s parameters: the chunks as one array a column."""
    return _claim_values(document_id, extraction, now) | {
        "p_text": extraction.text,
        "p_positions": [chunk.position for chunk in extraction.chunks],
        "p_starts": [chunk.start for chunk in extraction.chunks],
        "p_ends": [chunk.end for chunk in extraction.chunks],
        "p_contents": [chunk.text for chunk in extraction.chunks],
    }


def chunk_count(connection: Connection, document_id: str) -> int:
    counted: int = connection.execute(
        select(func.count()).select_from(chunks).where(chunks.c.document_id == document_id)
    ).scalar_one()
    return counted


class Listed(msgspec.Struct, frozen=True, kw_only=True):
    """A document as a list shows it: what it is, and where its task stands."""

    id: str
    filename: str
    detected_type: str | None
    size: int
    created_at: datetime
    processed_at: datetime | None
    task_id: str
    state: str | None
    step: str | None
    percent: float | None


class Listing(msgspec.Struct, frozen=True, kw_only=True):
    items: list[Listed]
    next_cursor: str | None


_LISTED: Select[Any] = select(
    documents.c.id,
    documents.c.filename,
    documents.c.detected_type,
    documents.c.size,
    documents.c.created_at,
    documents.c.processed_at,
    documents.c.task_id,
    task_runs.c.state,
    task_runs.c.step,
    task_runs.c.percent,
).select_from(documents.outerjoin(task_runs, task_runs.c.task_id == documents.c.task_id))


def page(
    connection: Connection, *, state: str | None, limit: int, cursor: str | None = None
) -> Listing:
    """Newest first (ix_documents_created_at), `limit` at a time, of one task state or all."""
    statement = _LISTED
    if state is not None:
        statement = statement.where(task_runs.c.state == state)
    if cursor is not None:
        statement = statement.where(cursors.before(documents.c.created_at, documents.c.id, cursor))
    statement = statement.order_by(documents.c.created_at.desc(), documents.c.id.desc())
    rows = connection.execute(statement.limit(limit + 1)).all()
    items = [as_struct(row, Listed) for row in rows[:limit]]
    last = items[-1] if len(rows) > limit else None
    return Listing(
        items=items, next_cursor=cursors.encode(last.created_at, last.id) if last else None
    )
