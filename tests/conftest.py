"""Database fixtures shared by every test folder: each database test runs on SQLite and on PostgreSQL.

SQLite gets a fresh file per test. PostgreSQL gets a database of its own per test session
(tests/postgres.py), migrated once and emptied before each test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text, update
from sqlalchemy.orm import Session, sessionmaker

from app.settings import Settings
from app.store.db import db_time, make_engine, session_factory, transaction, upgrade_to_head
from app.store.jobs import submit_job
from app.store.tables import Base, Trial
from ml.job import JobSpec
from tests.postgres import BACKENDS, fresh_postgres_database

pytest_plugins = ["tests.s3"]  # moto_endpoint, s3_env, s3_url: a loopback S3 server


@pytest.fixture(scope="session")
def postgres_session_url() -> Iterator[str]:
    with fresh_postgres_database() as url:
        upgrade_to_head(url)
        yield url


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'sweepserve.db'}"
        upgrade_to_head(url)
        return url
    url: str = request.getfixturevalue("postgres_session_url")
    _empty_all_tables(url)
    return url


@pytest.fixture(params=BACKENDS)
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database that was never migrated (for migration tests)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    with fresh_postgres_database("sweepserve_migrate") as url:
        yield url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def factory(engine: Engine) -> sessionmaker[Session]:
    return session_factory(engine)


@pytest.fixture
def submit(factory: sessionmaker[Session]) -> Callable[..., list[int]]:
    """submit(n_trials, priority=0, max_attempts=3, **train) -> the job's trial ids in index order."""

    def _submit(n_trials: int, priority: int = 0, max_attempts: int = 3, **train: Any) -> list[int]:
        spec = JobSpec.model_validate(
            {
                "search": {"space": {"seed": list(range(n_trials))}},
                "train": {"epochs": 3, **train},
                "priority": priority,
                "max_attempts": max_attempts,
            }
        )
        with transaction(factory) as session:
            job, _ = submit_job(session, spec)
            return [trial.id for trial in job.trials]

    return _submit


@pytest.fixture
def expire_lease(engine: Engine) -> Callable[[int], None]:
    """expire_lease(trial_id): let a lease run out now instead of sleeping through it."""

    def _expire(trial_id: int) -> None:
        with engine.begin() as conn:
            conn.execute(
                update(Trial).where(Trial.id == trial_id).values(lease_expires_at=db_time(engine) - 1.0)
            )

    return _expire


@pytest.fixture
def worker_settings(db_url: str, tmp_path: Path) -> Callable[..., Settings]:
    """worker_settings(**overrides): settings for a worker on this test's database and folders."""

    def _settings(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": db_url,
            "artifacts_dir": tmp_path / "artifacts",
            "data_dir": tmp_path / "data",
            "allow_download": False,
            "lease_seconds": 5.0,
            "heartbeat_seconds": 0.5,
            "poll_seconds": 0.1,
        }
        return Settings(_env_file=None, **(values | overrides))  # type: ignore[call-arg]  # no developer .env

    return _settings


def _empty_all_tables(url: str) -> None:
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            names = ", ".join(f'"{table.name}"' for table in Base.metadata.sorted_tables)
            conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny learnable CIFAR-shaped ImageFolder (300 train, 50 test images) for real workers."""
    from tests.synthetic import write_image_folder  # torch: imported only by tests that train

    root = tmp_path_factory.mktemp("cifar")
    write_image_folder(root, n_train_per_class=30, n_test_per_class=5)
    return root


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Everyone shares two cores; a worker process gets OMP_NUM_THREADS=1 for the same reason."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
