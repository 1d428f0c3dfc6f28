"""CHECK constraints on jobs.status and trials.status; trials.epoch is renamed epochs_done.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 21:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written out, not imported: a migration must keep meaning what it meant when it was written.
JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
TRIAL_STATUSES = ("queued", "running", "succeeded", "failed", "pruned", "cancelled")


def _in(values: Sequence[str]) -> str:
    return "status IN (" + ", ".join(f"'{v}'" for v in values) + ")"


def upgrade() -> None:
    # batch: SQLite adds a constraint or renames a column by copying the table.
    with op.batch_alter_table("jobs") as batch:
        batch.create_check_constraint("ck_jobs_status", _in(JOB_STATUSES))
    with op.batch_alter_table("trials") as batch:
        batch.create_check_constraint("ck_trials_status", _in(TRIAL_STATUSES))
        batch.alter_column("epoch", new_column_name="epochs_done")


def downgrade() -> None:
    with op.batch_alter_table("trials") as batch:
        batch.alter_column("epochs_done", new_column_name="epoch")
        batch.drop_constraint("ck_trials_status", type_="check")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint("ck_jobs_status", type_="check")
