"""PostgreSQL keeps a chunk's tsvector in its row (compressed if need be) instead of in the TOAST
table: ranking a search's matches (`ts_rank`) read each match's vector from TOAST, one more
index lookup and page per match.

Revision ID: 0008
Revises: 0007
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE chunks ALTER COLUMN search_vector SET STORAGE MAIN")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE chunks ALTER COLUMN search_vector SET STORAGE EXTENDED")
