"""Each redrive item keeps its letter's `republished_at` as the job read it: the job takes the
letter only while it is still that (`dead_letters.claim_for_redrive`). A job compared the stamp
with its own `created_at` instead — two clocks when another API process stamped it, and a stamp
taken before the job's but committed after its read looked older than the job.

Items of jobs made before this keep what that comparison said: the letter's stamp if it was older
than the job (or none), else a stamp no re-publishing has (`NEVER`), so the job does not take it.

Revision ID: 0010
Revises: 0009
"""

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

NEVER = datetime(1970, 1, 1, tzinfo=UTC)


def upgrade() -> None:
    with op.batch_alter_table("redrive_items") as table:
        table.add_column(sa.Column("seen_republished_at", sa.DateTime(timezone=True)))
    op.execute(
        sa.text(
            "UPDATE redrive_items SET seen_republished_at = ("
            " SELECT CASE WHEN dl.republished_at IS NULL THEN NULL"
            " WHEN dl.republished_at < r.created_at THEN dl.republished_at ELSE :never END"
            " FROM dead_letters dl JOIN redrives r ON r.id = redrive_items.redrive_id"
            " WHERE dl.id = redrive_items.dead_letter_id"
            ") WHERE state = 'pending'"
        ).bindparams(sa.bindparam("never", NEVER, type_=sa.DateTime(timezone=True)))
    )


def downgrade() -> None:
    with op.batch_alter_table("redrive_items") as table:
        table.drop_column("seen_republished_at")
