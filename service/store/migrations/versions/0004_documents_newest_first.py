"""Documents listed newest first by an index walk (the console's list pages through them).

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_documents_created_at", "documents", ["created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_documents_created_at", table_name="documents")
