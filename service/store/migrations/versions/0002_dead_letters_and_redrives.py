"""Dead letters (raw message, why it died, failure context, re-publish history) and redrive jobs.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("message_key", sa.String(64), nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("content_type", sa.String(255)),
        sa.Column("content_encoding", sa.String(255)),
        sa.Column("headers", sa.JSON, nullable=False),
        sa.Column("properties", sa.JSON, nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("queue", sa.String(255), nullable=False),
        sa.Column("exchange", sa.String(255)),
        sa.Column("routing_keys", sa.JSON, nullable=False),
        sa.Column("death_count", sa.Integer, nullable=False),
        sa.Column("first_death_at", Timestamp),
        sa.Column("dead_at", Timestamp, nullable=False),
        sa.Column("task_name", sa.String(255)),
        sa.Column("task_id", sa.String(255)),
        sa.Column("args", sa.JSON),
        sa.Column("kwargs", sa.JSON),
        sa.Column("retries", sa.Integer),
        sa.Column("root_id", sa.String(255)),
        sa.Column("parent_id", sa.String(255)),
        sa.Column("correlation_id", sa.String(255)),
        sa.Column("error_type", sa.String(255)),
        sa.Column("error_message", sa.Text),
        sa.Column("traceback", sa.Text),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("republished_from", sa.String(36)),
        sa.Column("republish_count", sa.Integer, nullable=False),
        sa.Column("republished_at", Timestamp),
        sa.Column("discarded_at", Timestamp),
        sa.Column("stored_at", Timestamp, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
    )
    op.create_index("ix_dead_letters_message_key", "dead_letters", ["message_key"])
    op.create_index("ix_dead_letters_dead_at", "dead_letters", ["dead_at", "id"])
    op.create_index("ix_dead_letters_task_id", "dead_letters", ["task_id"])
    op.create_index("ix_dead_letters_fingerprint", "dead_letters", ["fingerprint"])
    op.create_index("ix_dead_letters_queue_reason", "dead_letters", ["queue", "reason"])
    op.create_table(
        "redrives",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("filters", sa.JSON, nullable=False),
        sa.Column("rate", sa.Float, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("matched", sa.Integer, nullable=False),
        sa.Column("published", sa.Integer, nullable=False),
        sa.Column("failed", sa.Integer, nullable=False),
        sa.Column("last_error", sa.Text),
        sa.Column("owner", sa.String(255)),
        sa.Column("heartbeat_at", Timestamp),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("started_at", Timestamp),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.Column("finished_at", Timestamp),
    )
    op.create_index("ix_redrives_state", "redrives", ["state"])
    op.create_table(
        "redrive_items",
        sa.Column(
            "redrive_id",
            sa.String(36),
            sa.ForeignKey("redrives.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("dead_letter_id", sa.String(36), primary_key=True),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("error", sa.Text),
    )
    op.create_index(
        "ix_redrive_items_pending", "redrive_items", ["redrive_id", "state", "position"]
    )


def downgrade() -> None:
    op.drop_table("redrive_items")
    op.drop_table("redrives")
    op.drop_table("dead_letters")
