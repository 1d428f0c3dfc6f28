"""Ids that reach a URL are never reused (SQLite AUTOINCREMENT on jobs, trials, models);
model aliases (`champion`, user names) and the history of their moves.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 02:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# PostgreSQL sequences never hand out an id twice; SQLite reuses the largest rowid after a delete
# unless the table is declared AUTOINCREMENT, which only a rebuild can do.
TABLES = ("jobs", "trials", "models")
_PLAIN_ID = "id INTEGER NOT NULL, "
_AUTO_ID = "id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, "
_PK_LINE = "\tPRIMARY KEY (id), \n"
_CONSTRAINTS = ("\tCONSTRAINT", "\tUNIQUE", "\tFOREIGN KEY", "\tCHECK")


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_sqlite(_with_autoincrement)
    op.create_table(
        "model_aliases",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("model_id", sa.Integer, sa.ForeignKey("models.id", ondelete="CASCADE"), nullable=False),
        sa.Column("pinned", sa.Boolean, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    )
    op.create_index("ix_model_aliases_model_id", "model_aliases", ["model_id"])
    op.create_table(
        "alias_moves",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("alias", sa.String(64), nullable=False),
        # No foreign keys: the history outlives the models it names.
        sa.Column("from_model", sa.Integer, nullable=True),
        sa.Column("to_model", sa.Integer, nullable=True),
        sa.Column("reason", sa.Text, nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_alias_moves_alias", "alias_moves", ["alias"])


def downgrade() -> None:
    op.drop_index("ix_alias_moves_alias", "alias_moves")
    op.drop_table("alias_moves")
    op.drop_index("ix_model_aliases_model_id", "model_aliases")
    op.drop_table("model_aliases")
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_sqlite(_without_autoincrement)


def _with_autoincrement(sql: str) -> str:
    assert _PLAIN_ID in sql and _PK_LINE in sql, f"unexpected table definition: {sql}"
    return sql.replace(_PLAIN_ID, _AUTO_ID, 1).replace(_PK_LINE, "", 1)


def _without_autoincrement(sql: str) -> str:
    assert _AUTO_ID in sql, f"unexpected table definition: {sql}"
    sql = sql.replace(_AUTO_ID, _PLAIN_ID, 1)
    first = min(sql.index(mark) for mark in _CONSTRAINTS if mark in sql)  # PRIMARY KEY comes first
    return sql[:first] + _PK_LINE + sql[first:]


def _rebuild_sqlite(rewrite) -> None:  # type: ignore[no-untyped-def]
    """Recreate TABLES from their own CREATE statements, rewritten, keeping every row.

    Dropping a table whose children cascade would empty them when foreign keys are on (and a
    PRAGMA cannot turn them off inside the migration's transaction), so every table that depends
    on the rebuilt ones is copied aside first and restored afterwards, parents first.
    """
    conn = op.get_bind()
    affected = _dependents(conn, TABLES)
    for table in affected:
        conn.exec_driver_sql(f'CREATE TEMP TABLE "_keep_{table}" AS SELECT * FROM "{table}"')
    for table in TABLES:
        sql = conn.exec_driver_sql(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
        ).scalar_one()
        indexes = conn.exec_driver_sql(
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL",
            (table,),
        ).scalars()
        indexes = list(indexes)
        conn.exec_driver_sql(f'DROP TABLE "{table}"')
        conn.exec_driver_sql(rewrite(sql))
        for index in indexes:
            conn.exec_driver_sql(index)
    for table in reversed(affected):  # with foreign keys off, children kept their rows: no duplicates
        conn.exec_driver_sql(f'DELETE FROM "{table}"')
    for table in affected:
        columns = ", ".join(f'"{row[1]}"' for row in conn.exec_driver_sql(f'PRAGMA table_info("{table}")'))
        conn.exec_driver_sql(f'INSERT INTO "{table}" ({columns}) SELECT {columns} FROM "_keep_{table}"')
        conn.exec_driver_sql(f'DROP TABLE "_keep_{table}"')


def _dependents(conn, roots: Sequence[str]) -> list[str]:  # type: ignore[no-untyped-def]
    """`roots` and every table that references them (transitively), parents before children."""
    names = conn.exec_driver_sql(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
    ).scalars()
    parents = {
        name: {row[2] for row in conn.exec_driver_sql(f'PRAGMA foreign_key_list("{name}")')}
        for name in list(names)
    }
    order: list[str] = []
    wanted = set(roots)
    changed = True
    while changed:  # grow the set to everything that points into it
        changed = False
        for name, refs in parents.items():
            if name not in wanted and refs & wanted:
                wanted.add(name)
                changed = True
    while len(order) < len(wanted):  # parents first
        for name in sorted(wanted - set(order)):
            if not (parents[name] & wanted) - set(order) - {name}:
                order.append(name)
    return order
