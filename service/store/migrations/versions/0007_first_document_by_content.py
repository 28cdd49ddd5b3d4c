"""The earliest document with given content found by one index seek: the upload's duplicate
check (`duplicate_of`) read every earlier copy of the same bytes and sorted them, so each upload
of a file sent many times cost more than the one before.

Revision ID: 0007
Revises: 0006
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_documents_sha256", table_name="documents")
    op.create_index("ix_documents_sha256", "documents", ["sha256", "created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_documents_sha256", table_name="documents")
    op.create_index("ix_documents_sha256", "documents", ["sha256"])
