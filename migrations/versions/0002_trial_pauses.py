"""trials.pauses: claims that ended with an ASHA pause at a rung (they are not failures).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 11:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # server_default fills the rows already stored: no trial of an older version was ever paused.
    with op.batch_alter_table("trials") as batch:
        batch.add_column(sa.Column("pauses", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("trials") as batch:
        batch.drop_column("pauses")
