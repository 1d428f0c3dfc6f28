"""Adaptive search and repeats: jobs.trials_target, trials.point, and the image counts that
give each accuracy its interval (trials.val_images, trials.test_images).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 02:50:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("trials_target", sa.Integer(), nullable=True))
    with op.batch_alter_table("trials") as batch:
        batch.add_column(sa.Column("point", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("val_images", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("test_images", sa.Integer(), nullable=True))
    # Before repeats every trial was its own point.
    op.execute('UPDATE trials SET point = "index"')
    with op.batch_alter_table("trials") as batch:
        batch.alter_column("point", existing_type=sa.Integer(), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("trials") as batch:
        batch.drop_column("test_images")
        batch.drop_column("val_images")
        batch.drop_column("point")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("trials_target")
