"""Engine and sessions for SQLite (embedded default) and PostgreSQL (psycopg 3)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, Float, create_engine, event, literal_column, text
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.elements import ColumnElement

SQLITE_BUSY_TIMEOUT_MS = 30_000  # writers wait this long for the lock instead of failing
MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"
# Our own version table, so the schema can live in a database that already uses Alembic.
ALEMBIC_VERSION_TABLE = "sweepserve_alembic_version"
PG_CONNECT_TIMEOUT_S = 5
MIGRATION_LOCK_KEY = 0x7377_6565_7073_7276  # pg_advisory_xact_lock key ("sweepsrv"), any fixed int64


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        return _sqlite_engine(url)
    # pool_pre_ping: a worker survives a PostgreSQL restart by reconnecting on next use.
    # connect_timeout: an unreachable server fails a connect in seconds, not the OS's minutes, so
    # a worker told to stop is never held up by a database that is gone.
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=5,
        max_overflow=5,
        connect_args={"connect_timeout": PG_CONNECT_TIMEOUT_S},
    )


def _sqlite_engine(url: str) -> Engine:
    path = url.split("///", 1)[-1]
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    # isolation_level=None: pysqlite must not issue its own BEGIN; we say BEGIN IMMEDIATE below.
    engine = create_engine(
        url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:  # type: ignore[no-untyped-def]
        # Take the write lock up front: two workers can never both read "queued" and both claim.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def db_time(engine: Engine) -> ColumnElement[float]:
    """The database's clock in epoch seconds, so leases never depend on a worker's clock."""
    # A typed column expression (not bare text) so it composes: `db_time(e) + lease_seconds`.
    if is_sqlite(engine):
        return literal_column("((julianday('now') - 2440587.5) * 86400.0)", Float())
    return literal_column("extract(epoch from clock_timestamp())", Float())


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    with factory() as session, session.begin():
        yield session


def migration_options(connection: Connection | None = None) -> dict[str, Any]:
    """Options for Alembic's context, shared by migrations/env.py and schema comparisons."""
    sqlite = connection is not None and connection.dialect.name == "sqlite"
    # render_as_batch: SQLite can only ALTER by copying the table, which batch mode does.
    return {"version_table": ALEMBIC_VERSION_TABLE, "compare_type": True, "render_as_batch": sqlite}


def alembic_config(url: str, connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))  # ConfigParser interpolation
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@contextmanager
def migration_transaction(engine: Engine) -> Iterator[Connection]:
    """One transaction for a migration. On SQLite, with foreign keys off while it runs.

    SQLite alters a table by copying it and dropping the original; with foreign keys on, that
    drop cascades (rebuilding `jobs` would delete every trial). The pragma is a no-op inside a
    transaction, so it is set before BEGIN; the keys are checked before the commit instead.
    """
    sqlite = is_sqlite(engine)
    with engine.connect() as connection:
        raw = connection.connection.driver_connection
        if sqlite:
            raw.execute("PRAGMA foreign_keys=OFF")
        try:
            with connection.begin():
                yield connection
                if sqlite and (broken := connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()):
                    raise RuntimeError(f"migration left rows without their parent: {broken[:5]}")
        finally:
            if sqlite:
                raw.execute("PRAGMA foreign_keys=ON")


def upgrade_to_head(url: str) -> None:
    """Migrate the schema to the newest revision; safe when an API and workers start together.

    One transaction holds a lock for the whole upgrade, so a second caller waits and then finds
    the schema already at head: pg_advisory_xact_lock on PostgreSQL; on SQLite the BEGIN
    IMMEDIATE that every transaction here starts with.
    """
    engine = make_engine(url)
    try:
        with migration_transaction(engine) as connection:
            if not is_sqlite(engine):
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            command.upgrade(alembic_config(url, connection), "head")
    finally:
        engine.dispose()


def schema_revision(engine: Engine) -> str | None:
    """The revision the database is at; None for a database never migrated."""
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": ALEMBIC_VERSION_TABLE})
        return context.get_current_revision()


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    if head is None:
        raise RuntimeError(f"no migrations found in {MIGRATIONS_DIR}")
    return head
