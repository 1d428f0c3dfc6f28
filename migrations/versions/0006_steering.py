"""Steerable sweeps: trials.preemptions, attempts_forgiven, extensions and archived_at;
models.archived_at; jobs.max_concurrent_trials.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 02:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COUNTERS = ("preemptions", "attempts_forgiven", "extensions")


def upgrade() -> None:
    # Plain ADD COLUMNs (no table copy on SQLite); server_default fills the rows already stored.
    for name in COUNTERS:
        op.add_column("trials", sa.Column(name, sa.Integer(), nullable=False, server_default="0"))
    op.add_column("trials", sa.Column("archived_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("models", sa.Column("archived_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("jobs", sa.Column("max_concurrent_trials", sa.Integer(), nullable=True))


def downgrade() -> None:
    # Plain DROP COLUMNs (SQLite >= 3.35): a batch table copy would lose 0005's AUTOINCREMENT.
    op.drop_column("jobs", "max_concurrent_trials")
    op.drop_column("models", "archived_at")
    for name in (*COUNTERS, "archived_at"):
        op.drop_column("trials", name)
