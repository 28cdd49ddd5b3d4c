"""The tables, as SQLAlchemy Core sees them. Migrations (store/migrations) create and change them;
the full-text index is dialect-specific and lives only there."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

metadata = MetaData()

# SQLite only autoincrements an INTEGER PRIMARY KEY (its rowid); PostgreSQL wants a bigint.
RowId = BigInteger().with_variant(Integer(), "sqlite")


class Timestamp(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out, on both stores (SQLite keeps no zone: it stores UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use datetime.now(UTC)")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


documents = Table(
    "documents",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("filename", String(1024), nullable=False),
    Column("content_type", String(255)),
    Column("detected_type", String(32)),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("content", LargeBinary, nullable=False),
    Column("title", Text),
    # The document's own metadata, as its format gave it: not when docproc received it.
    Column("author", Text),
    Column("authored_at", Timestamp()),
    Column("modified_at", Timestamp()),
    Column("language", String(16)),  # ISO 639-1
    Column("encoding", String(64)),
    Column("page_count", Integer),
    Column("char_count", Integer),
    Column("chunk_count", Integer),
    Column("task_id", String(255), nullable=False, unique=True),
    Column("correlation_id", String(255)),
    Column("created_at", Timestamp(), nullable=False),
    Column("updated_at", Timestamp(), nullable=False),
    Column("processed_at", Timestamp()),
    # NULL until the task message is confirmed by the broker; beat's sweeper publishes the rest.
    Column("published_at", Timestamp()),
    # How often beat's reconciliation found its confirmed message lost, and re-published it.
    Column("reconciled_count", Integer, nullable=False, default=0, server_default="0"),
    Column("reconciled_at", Timestamp()),
    Index("ix_documents_unpublished", "published_at", "created_at"),
    Index("ix_documents_created_at", "created_at", "id"),
    # The earliest copy of the same bytes (an upload's `duplicate_of`) in one seek.
    Index("ix_documents_sha256", "sha256", "created_at", "id"),
    # The search filters: type, language, and `since` on the document's own date (DATED_AT).
    Index("ix_documents_detected_type", "detected_type"),
    Index("ix_documents_language", "language"),
)

DATED_AT = func.coalesce(
    documents.c.modified_at, documents.c.authored_at, documents.c.created_at, type_=Timestamp()
)
"""A document's date for `since`: its own last modification, else its own creation, else when
docproc accepted it."""
Index("ix_documents_dated_at", DATED_AT)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    # A client's Idempotency-Key: the same key within its lifetime names the same upload.
    Column("key", String(255), primary_key=True),
    Column("sha256", String(64), nullable=False),
    Column("document_id", String(36), nullable=False),
    Column("task_id", String(255), nullable=False),
    Column("created_at", Timestamp(), nullable=False, index=True),
)

document_texts = Table(
    "document_texts",
    metadata,
    Column(
        "document_id",
        String(36),
        ForeignKey("documents.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("text", Text, nullable=False),
)

chunks = Table(
    "chunks",
    metadata,
    Column("id", RowId, primary_key=True, autoincrement=True),
    Column(
        "document_id",
        String(36),
        ForeignKey("documents.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("position", Integer, nullable=False),
    Column("start_offset", Integer, nullable=False),
    Column("end_offset", Integer, nullable=False),
    Column("content", Text, nullable=False),
    UniqueConstraint("document_id", "position", name="uq_chunks_document_position"),
)

task_runs = Table(
    "task_runs",
    metadata,
    Column("task_id", String(255), primary_key=True),
    Column("task_name", String(255), nullable=False),
    Column("document_id", String(36), index=True),
    Column("state", String(16), nullable=False),
    Column("step", String(64)),
    Column("steps_done", Integer, nullable=False, default=0),
    Column("steps_total", Integer, nullable=False, default=0),
    Column("percent", Float, nullable=False, default=0.0),
    Column("retries", Integer, nullable=False, default=0),
    Column("retry_history", JSON, nullable=False, default=list),
    # The steps of a run that recorded them (the document task, at success): [StepTime, ...].
    Column("step_times", JSON),
    Column("next_retry_at", Timestamp()),
    Column("error_type", String(255)),
    Column("error_message", Text),
    Column("traceback", Text),
    Column("queue", String(255)),
    Column("worker", String(255)),
    Column("correlation_id", String(255)),
    Column("created_at", Timestamp(), nullable=False),
    Column("started_at", Timestamp()),
    Column("updated_at", Timestamp(), nullable=False),
    Column("finished_at", Timestamp()),
    Index("ix_task_runs_state_updated", "state", "updated_at"),
)

dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", String(36), primary_key=True),
    # Identifies one message across redeliveries to the DLQ consumer (see deadletters.parsing);
    # looked up only in the consumer's ledger, so not indexed here (migration 0009).
    Column("message_key", String(64), nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("content_type", String(255)),
    Column("content_encoding", String(255)),
    Column("headers", JSON, nullable=False),
    Column("properties", JSON, nullable=False),
    Column("reason", String(32), nullable=False),
    Column("queue", String(255), nullable=False),
    Column("exchange", String(255)),
    Column("routing_keys", JSON, nullable=False),
    Column("death_count", Integer, nullable=False),
    Column("first_death_at", Timestamp()),
    Column("dead_at", Timestamp(), nullable=False),
    Column("task_name", String(255)),
    Column("task_id", String(255), index=True),
    Column("args", JSON),
    Column("kwargs", JSON),
    Column("retries", Integer),
    Column("root_id", String(255)),
    Column("parent_id", String(255)),
    Column("correlation_id", String(255)),
    Column("error_type", String(255)),
    Column("error_message", Text),
    Column("traceback", Text),
    Column("fingerprint", String(64), nullable=False, index=True),
    Column("republished_from", String(36)),
    # What could not be read as it was: fields stored raw, cut or with NUL replaced.
    Column("problems", JSON),
    Column("republish_count", Integer, nullable=False, default=0),
    Column("republished_at", Timestamp()),
    Column("discarded_at", Timestamp()),
    # The task succeeded after all (a later delivery): the letter is history, not a failure.
    Column("superseded_at", Timestamp()),
    Column("stored_at", Timestamp(), nullable=False),
    Column("updated_at", Timestamp(), nullable=False),
    Index("ix_dead_letters_dead_at", "dead_at", "id"),
    Index("ix_dead_letters_queue_reason", "queue", "reason"),
)

dead_letter_ledger = Table(
    "dead_letter_ledger",
    metadata,
    # Records the DLQ consumer committed but may not have acked: a redelivered message with the
    # same key is matched to one of them instead of becoming a second record (deadletters.consumer).
    Column("session", String(64), primary_key=True),
    Column("dead_letter_id", String(36), primary_key=True),
    Column("message_key", String(64), nullable=False, index=True),
)

leases = Table(
    "leases",
    metadata,
    # One holder at a time (the DLQ consumer), for as long as it keeps renewing.
    Column("name", String(64), primary_key=True),
    Column("owner", String(255), nullable=False),
    Column("expires_at", Timestamp(), nullable=False),
)

redrives = Table(
    "redrives",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("filters", JSON, nullable=False),
    Column("rate", Float, nullable=False),
    Column("state", String(16), nullable=False, index=True),
    Column("matched", Integer, nullable=False, default=0),
    Column("published", Integer, nullable=False, default=0),
    Column("failed", Integer, nullable=False, default=0),
    Column("last_error", Text),
    # Which API process runs it, and when it last said so: a dead owner's job is taken over.
    Column("owner", String(255)),
    Column("heartbeat_at", Timestamp()),
    Column("created_at", Timestamp(), nullable=False),
    Column("started_at", Timestamp()),
    Column("updated_at", Timestamp(), nullable=False),
    Column("finished_at", Timestamp()),
)

redrive_items = Table(
    "redrive_items",
    metadata,
    Column(
        "redrive_id",
        String(36),
        ForeignKey("redrives.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("dead_letter_id", String(36), primary_key=True),
    Column("position", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("error", Text),
    # The letter's `republished_at` when the job read it: the job takes the letter only while it
    # is still that (`dead_letters.claim_for_redrive`, migration 0010).
    Column("seen_republished_at", Timestamp()),
    Index("ix_redrive_items_pending", "redrive_id", "state", "position"),
)
