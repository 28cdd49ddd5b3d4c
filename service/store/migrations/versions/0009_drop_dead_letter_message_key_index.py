"""Dead letters lose their index on `message_key`: nothing reads it (the consumer's ledger has its
own), and a key that is a hash lands each new letter on a random page of it, which the batch's
commit then writes.

Revision ID: 0009
Revises: 0008
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_dead_letters_message_key", table_name="dead_letters")


def downgrade() -> None:
    op.create_index("ix_dead_letters_message_key", "dead_letters", ["message_key"])
