"""Checkpoints in object storage: the `checkpoints` table (a trial's last/best key, size, sha256)
and models.size/models.sha256, checked whenever a model is loaded.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 03:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ALTER TABLE (SQLite >= 3.35 drops columns too): a batch rebuild of `models` would lose
    # its AUTOINCREMENT (migration 0005).
    op.add_column("models", sa.Column("size", sa.BigInteger(), nullable=True))
    op.add_column("models", sa.Column("sha256", sa.String(64), nullable=True))
    op.create_table(
        "checkpoints",
        sa.Column("trial_id", sa.Integer(), sa.ForeignKey("trials.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String(16), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("trial_id", "name"),
    )


def downgrade() -> None:
    op.drop_table("checkpoints")
    op.drop_column("models", "sha256")
    op.drop_column("models", "size")
