"""The app on a temporary SQLite file and on a private PostgreSQL database: every API test runs on both.

PostgreSQL gets a database of its own per test session, created from the `postgres` database and
dropped at the end, so engineers and CI runs sharing the server never see each other's rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete
from sqlalchemy.orm import Session, sessionmaker

from app.api.main import create_app
from app.settings import Settings
from app.store.tables import AliasMove, Job, Worker
from tests.postgres import fresh_postgres_database


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    with fresh_postgres_database("sweepserve_api") as url:
        yield url


@pytest.fixture(scope="session", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('api-db') / 'sweepserve.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]  # a developer's .env must not leak into tests
        database_url=database_url,
        artifacts_dir=tmp_path / "artifacts",
        data_dir=tmp_path / "data",
        allow_download=False,
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    # raise_server_exceptions=False: a 500 must come back as the problem body clients see.
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        _delete_all_rows(test_client.app.state.session_factory)  # the database lives for the session
        # The predictor may have found an earlier test's model at start-up: make it see the empty tables.
        test_client.portal.call(test_client.app.state.predictor.refresh)
        yield test_client


@pytest.fixture
def sessions(client: TestClient) -> sessionmaker[Session]:
    """The app's own session factory, for arranging rows a worker would write."""
    return client.app.state.session_factory  # type: ignore[attr-defined]


def _delete_all_rows(factory: sessionmaker[Session]) -> None:
    with factory() as session:
        session.execute(delete(Job))  # trials, epoch metrics and models cascade
        session.execute(delete(Worker))
        session.execute(delete(AliasMove))  # the history outlives models: no cascade reaches it
        session.commit()
