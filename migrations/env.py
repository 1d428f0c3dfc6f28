"""Alembic environment. Run through `app.store.db.upgrade_to_head`, which passes in a connection
that already holds the migration lock; without one (offline `--sql`, or a bare `command.*`)
it connects from the config's URL itself."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from app.store.db import make_engine, migration_options, migration_transaction
from app.store.tables import Base

config = context.config


def _run_online(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=Base.metadata, **migration_options(connection))
    with context.begin_transaction():
        context.run_migrations()


def run() -> None:
    url = config.get_main_option("sqlalchemy.url")
    if context.is_offline_mode():
        context.configure(url=url, target_metadata=Base.metadata, literal_binds=True, **migration_options())
        with context.begin_transaction():
            context.run_migrations()
        return
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_online(connection)
        return
    engine = make_engine(url)
    try:
        with migration_transaction(engine) as owned:
            _run_online(owned)
    finally:
        engine.dispose()


run()
