"""Documents' own metadata: author, their own created and modified times, language; indexes for
the search filters (type, language, since).

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("documents") as table:
        table.add_column(sa.Column("author", sa.Text(), nullable=True))
        table.add_column(sa.Column("authored_at", Timestamp, nullable=True))
        table.add_column(sa.Column("modified_at", Timestamp, nullable=True))
        table.add_column(sa.Column("language", sa.String(16), nullable=True))
    op.create_index("ix_documents_detected_type", "documents", ["detected_type"])
    op.create_index("ix_documents_language", "documents", ["language"])
    op.create_index(
        "ix_documents_dated_at",
        "documents",
        [sa.text("coalesce(modified_at, authored_at, created_at)")],
    )


def downgrade() -> None:
    op.drop_index("ix_documents_dated_at", table_name="documents")
    op.drop_index("ix_documents_language", table_name="documents")
    op.drop_index("ix_documents_detected_type", table_name="documents")
    with op.batch_alter_table("documents") as table:
        for name in ("language", "modified_at", "authored_at", "author"):
            table.drop_column(name)
