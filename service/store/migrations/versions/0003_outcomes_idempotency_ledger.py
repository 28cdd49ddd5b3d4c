"""Trust at the edges: superseded dead letters and what could not be read of them, idempotent
uploads, the DLQ consumer's ledger and lease, reconciliation counts.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("dead_letters", sa.Column("superseded_at", Timestamp))
    op.add_column("dead_letters", sa.Column("problems", sa.JSON))
    op.add_column(
        "documents",
        sa.Column("reconciled_count", sa.Integer, nullable=False, server_default="0"),
    )
    op.add_column("documents", sa.Column("reconciled_at", Timestamp))
    op.create_table(
        "idempotency_keys",
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("document_id", sa.String(36), nullable=False),
        sa.Column("task_id", sa.String(255), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
    )
    op.create_index("ix_idempotency_keys_created_at", "idempotency_keys", ["created_at"])
    op.create_table(
        "dead_letter_ledger",
        sa.Column("session", sa.String(64), primary_key=True),
        sa.Column("dead_letter_id", sa.String(36), primary_key=True),
        sa.Column("message_key", sa.String(64), nullable=False),
    )
    op.create_index("ix_dead_letter_ledger_message_key", "dead_letter_ledger", ["message_key"])
    op.create_table(
        "leases",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("owner", sa.String(255), nullable=False),
        sa.Column("expires_at", Timestamp, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("leases")
    op.drop_table("dead_letter_ledger")
    op.drop_table("idempotency_keys")
    op.drop_column("documents", "reconciled_at")
    op.drop_column("documents", "reconciled_count")
    op.drop_column("dead_letters", "problems")
    op.drop_column("dead_letters", "superseded_at")
