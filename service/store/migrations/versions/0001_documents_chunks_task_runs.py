"""Documents, their text and chunks with a full-text index, task runs.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

RowId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Timestamp = sa.DateTime(timezone=True)

SQLITE_FULL_TEXT = [
    # An external-content FTS5 table over chunks.content, kept in step by triggers.
    """CREATE VIRTUAL TABLE chunks_fts USING fts5(
        content, content='chunks', content_rowid='id',
        tokenize='porter unicode61 remove_diacritics 2')""",
    """CREATE TRIGGER chunks_fts_insert AFTER INSERT ON chunks BEGIN
        INSERT INTO chunks_fts(rowid, content) VALUES (new.id, new.content);
    END""",
    """CREATE TRIGGER chunks_fts_delete AFTER DELETE ON chunks BEGIN
        INSERT INTO chunks_fts(chunks_fts, rowid, content) VALUES ('delete', old.id, old.content);
    END""",
    """CREATE TRIGGER chunks_fts_update AFTER UPDATE ON chunks BEGIN
        INSERT INTO chunks_fts(chunks_fts, rowid, content) VALUES ('delete', old.id, old.content);
        INSERT INTO chunks_fts(rowid, content) VALUES (new.id, new.content);
    END""",
]

POSTGRES_FULL_TEXT = [
    """ALTER TABLE chunks ADD COLUMN search_vector tsvector
        GENERATED ALWAYS AS (to_tsvector('english', content)) STORED""",
    "CREATE INDEX ix_chunks_search_vector ON chunks USING GIN (search_vector)",
]


def upgrade() -> None:
    op.create_table(
        "documents",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("filename", sa.String(1024), nullable=False),
        sa.Column("content_type", sa.String(255)),
        sa.Column("detected_type", sa.String(32)),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("content", sa.LargeBinary, nullable=False),
        sa.Column("title", sa.Text),
        sa.Column("encoding", sa.String(64)),
        sa.Column("page_count", sa.Integer),
        sa.Column("char_count", sa.Integer),
        sa.Column("chunk_count", sa.Integer),
        sa.Column("task_id", sa.String(255), nullable=False, unique=True),
        sa.Column("correlation_id", sa.String(255)),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.Column("processed_at", Timestamp),
        sa.Column("published_at", Timestamp),
    )
    op.create_index("ix_documents_sha256", "documents", ["sha256"])
    op.create_index("ix_documents_unpublished", "documents", ["published_at", "created_at"])
    op.create_table(
        "document_texts",
        sa.Column(
            "document_id",
            sa.String(36),
            sa.ForeignKey("documents.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("text", sa.Text, nullable=False),
    )
    op.create_table(
        "chunks",
        sa.Column("id", RowId, primary_key=True, autoincrement=True),
        sa.Column(
            "document_id",
            sa.String(36),
            sa.ForeignKey("documents.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("start_offset", sa.Integer, nullable=False),
        sa.Column("end_offset", sa.Integer, nullable=False),
        sa.Column("content", sa.Text, nullable=False),
        sa.UniqueConstraint("document_id", "position", name="uq_chunks_document_position"),
    )
    op.create_table(
        "task_runs",
        sa.Column("task_id", sa.String(255), primary_key=True),
        sa.Column("task_name", sa.String(255), nullable=False),
        sa.Column("document_id", sa.String(36)),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("step", sa.String(64)),
        sa.Column("steps_done", sa.Integer, nullable=False),
        sa.Column("steps_total", sa.Integer, nullable=False),
        sa.Column("percent", sa.Float, nullable=False),
        sa.Column("retries", sa.Integer, nullable=False),
        sa.Column("retry_history", sa.JSON, nullable=False),
        sa.Column("next_retry_at", Timestamp),
        sa.Column("error_type", sa.String(255)),
        sa.Column("error_message", sa.Text),
        sa.Column("traceback", sa.Text),
        sa.Column("queue", sa.String(255)),
        sa.Column("worker", sa.String(255)),
        sa.Column("correlation_id", sa.String(255)),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("started_at", Timestamp),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.Column("finished_at", Timestamp),
    )
    op.create_index("ix_task_runs_document_id", "task_runs", ["document_id"])
    op.create_index("ix_task_runs_state_updated", "task_runs", ["state", "updated_at"])
    full_text = SQLITE_FULL_TEXT if op.get_bind().dialect.name == "sqlite" else POSTGRES_FULL_TEXT
    for statement in full_text:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TABLE chunks_fts")
    op.drop_table("task_runs")
    op.drop_table("chunks")
    op.drop_table("document_texts")
    op.drop_table("documents")
