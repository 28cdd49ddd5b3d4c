"""Each step of a finished document task with its start and duration (the task's timeline).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("task_runs") as table:
        table.add_column(sa.Column("step_times", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("task_runs") as table:
        table.drop_column("step_times")
