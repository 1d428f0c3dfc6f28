"""Alembic migrations: the migrated schema is exactly app/store/tables.py, on SQLite and PostgreSQL."""

from __future__ import annotations

import multiprocessing
import time

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect, text
from sqlalchemy.exc import IntegrityError

from app.store.db import (
    ALEMBIC_VERSION_TABLE,
    MIGRATION_LOCK_KEY,
    alembic_config,
    head_revision,
    is_sqlite,
    make_engine,
    migration_options,
    schema_revision,
    session_factory,
    upgrade_to_head,
)
from app.store.jobs import submit_job
from app.store.tables import Base
from ml.job import JobSpec
from tests.sweep_rows import write_sweep


def _schema_diff(engine: Engine) -> list[object]:
    with engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn, opts=migration_options(conn)), Base.metadata)


def test_upgrade_gives_exactly_the_models_schema(empty_db_url: str) -> None:
    engine = make_engine(empty_db_url)
    try:
        assert schema_revision(engine) is None
        assert _schema_diff(engine), "an empty database must differ from the models"
        upgrade_to_head(empty_db_url)
        assert schema_revision(engine) == head_revision()
        assert _schema_diff(engine) == []
        tables = set(inspect(engine).get_table_names())
        assert ALEMBIC_VERSION_TABLE in tables
        assert "alembic_version" not in tables  # the default name is left to whoever shares the database
    finally:
        engine.dispose()


def test_upgrade_on_a_migrated_database_changes_nothing(db_url: str) -> None:
    upgrade_to_head(db_url)
    engine = make_engine(db_url)
    try:
        assert schema_revision(engine) == head_revision()
        assert _schema_diff(engine) == []
    finally:
        engine.dispose()


def test_downgrade_to_base_and_back(empty_db_url: str) -> None:
    upgrade_to_head(empty_db_url)
    command.downgrade(alembic_config(empty_db_url), "base")
    engine = make_engine(empty_db_url)
    try:
        assert set(inspect(engine).get_table_names()) == {ALEMBIC_VERSION_TABLE}
        assert schema_revision(engine) is None
        command.upgrade(alembic_config(empty_db_url), "head")
        assert _schema_diff(engine) == []
    finally:
        engine.dispose()


def test_concurrent_upgrades_wait_for_each_other(empty_db_url: str) -> None:
    """Three processes (an API and workers starting together) upgrade one empty database."""
    engine = make_engine(empty_db_url)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=upgrade_to_head, args=(empty_db_url,)) for _ in range(3)]
    try:
        # Hold the migration lock while they start, so all three contend the moment it is released.
        with engine.connect() as conn, conn.begin():
            if not is_sqlite(engine):
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            for proc in procs:
                proc.start()
            time.sleep(3.0)
            assert all(proc.is_alive() for proc in procs), "an upgrade ran without taking the lock"
        for proc in procs:
            proc.join(timeout=60)
        assert [proc.exitcode for proc in procs] == [0, 0, 0]
        assert schema_revision(engine) == head_revision()
        assert _schema_diff(engine) == []
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
        engine.dispose()


@pytest.mark.parametrize(("table", "status"), [("jobs", "paused"), ("trials", "done"), ("trials", "QUEUED")])
def test_the_database_refuses_a_status_outside_the_enums(db_url: str, table: str, status: str) -> None:
    spec = JobSpec.model_validate({"search": {"space": {"seed": [0]}}, "train": {"epochs": 1}})
    engine = make_engine(db_url)
    try:
        with session_factory(engine)() as session, session.begin():
            job, _ = submit_job(session, spec)
            row_id = job.id if table == "jobs" else job.trials[0].id
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(
                text(f"UPDATE {table} SET status = :status WHERE id = :id"), {"status": status, "id": row_id}
            )
        with engine.connect() as conn:
            stored = conn.execute(text(f"SELECT status FROM {table} WHERE id = :id"), {"id": row_id}).scalar()
        assert stored == "queued"
    finally:
        engine.dispose()


def _row_counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one() for t in TABLES_WITH_ROWS}


TABLES_WITH_ROWS = ("jobs", "trials", "epoch_metrics")


def test_migrating_down_and_up_keeps_every_row(db_url: str) -> None:
    """SQLite rebuilds a table to alter it; with foreign keys on, dropping `jobs` would cascade."""
    upgrade_to_head(db_url)
    engine = make_engine(db_url)
    try:
        write_sweep(session_factory(engine), n_trials=3)
        before = _row_counts(engine)
        assert all(before.values()), before
        command.downgrade(alembic_config(db_url), "0002")
        assert _row_counts(engine) == before
        upgrade_to_head(db_url)
        assert _row_counts(engine) == before
    finally:
        engine.dispose()


AUTOINCREMENT_REVISION = "0005"


def _previous(revision: str) -> str:
    down = ScriptDirectory.from_config(alembic_config("sqlite://")).get_revision(revision).down_revision
    assert isinstance(down, str)
    return down


def _rows(engine: Engine) -> dict[str, list[tuple[object, ...]]]:
    with engine.connect() as conn:
        return {
            table: [tuple(row) for row in conn.execute(text(f"SELECT * FROM {table} ORDER BY id"))]
            for table in ("jobs", "trials", "epoch_metrics", "models")
        }


def test_autoincrement_migration_keeps_every_row_and_ids_are_never_reused(empty_db_url: str) -> None:
    """Upgrading a database with jobs, trials, epochs and models keeps them all (the SQLite table
    rebuild must not cascade-delete children); after that a deleted job's id is not handed out again."""
    command.upgrade(alembic_config(empty_db_url), "0003")
    engine = make_engine(empty_db_url)
    try:
        with engine.begin() as conn:
            for _ in range(2):  # no explicit ids: PostgreSQL's sequences must advance
                job_id = conn.execute(
                    text(
                        "INSERT INTO jobs (name, status, spec, spec_digest, priority) "
                        "VALUES ('j', 'succeeded', '{}', 'd', 0) RETURNING id"
                    )
                ).scalar_one()
                trial_id = conn.execute(
                    text(
                        'INSERT INTO trials (job_id, "index", params, config, status, epochs_done, epochs,'
                        " attempts, max_attempts, cancel_requested, pauses)"
                        " VALUES (:job, 0, '{}', '{}', 'succeeded', 1, 1, 1, 3, false, 0) RETURNING id"
                    ),
                    {"job": job_id},
                ).scalar_one()
                conn.execute(
                    text(
                        "INSERT INTO epoch_metrics (trial_id, epoch, train_loss, train_accuracy, val_loss,"
                        " val_accuracy, lr, seconds, images_per_second, attempt)"
                        " VALUES (:trial, 1, 1, 0.5, 1, 0.5, 0.1, 1, 1, 1)"
                    ),
                    {"trial": trial_id},
                )
                conn.execute(
                    text(
                        "INSERT INTO models (job_id, trial_id, arch, epoch, val_accuracy, path)"
                        " VALUES (:job, :trial, 'resnet18', 1, 0.5, 'p')"
                    ),
                    {"job": job_id, "trial": trial_id},
                )
        command.upgrade(alembic_config(empty_db_url), _previous(AUTOINCREMENT_REVISION))
        before = _rows(engine)
        command.upgrade(alembic_config(empty_db_url), AUTOINCREMENT_REVISION)
        assert _rows(engine) == before  # (later revisions add columns)
        upgrade_to_head(empty_db_url)
        assert _schema_diff(engine) == []
        with session_factory(engine)() as session, session.begin():
            session.execute(text("DELETE FROM jobs WHERE id = 2"))
        spec = JobSpec.model_validate({"search": {"space": {"seed": [0]}}, "train": {"epochs": 1}})
        with session_factory(engine)() as session, session.begin():
            job, _ = submit_job(session, spec)
            new_ids = (job.id, job.trials[0].id)
        assert new_ids == (3, 3)
        command.downgrade(alembic_config(empty_db_url), _previous(AUTOINCREMENT_REVISION))
        assert len(_rows(engine)["trials"]) == 2
    finally:
        engine.dispose()
