"""/healthz and /readyz on SQLite and PostgreSQL, including the ways readiness fails."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from app.store.db import ALEMBIC_VERSION_TABLE, head_revision


def test_healthz_answers_without_the_database(client: TestClient) -> None:
    client.app.state.engine = create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")  # type: ignore[attr-defined]
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_readyz_reports_database_schema_and_model(client: TestClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ready"
    checks = body["checks"]
    assert checks["database"] == "ok" and checks["schema"] == "at head"
    assert checks["revision"] == checks["head"] == head_revision()
    # No model registered yet: reported, but the service is still ready to take jobs.
    assert checks["model"]["model_id"] is None and checks["model"]["loaded"] is False


@pytest.fixture
def stale_schema(sessions: sessionmaker[Session]) -> Iterator[None]:
    """Pretend the database is one migration behind, as after deploying new code without `migrate`."""
    with sessions() as session:
        session.execute(text(f"UPDATE {ALEMBIC_VERSION_TABLE} SET version_num = 'older'"))
        session.commit()
    try:
        yield
    finally:
        with sessions() as session:
            session.execute(
                text(f"UPDATE {ALEMBIC_VERSION_TABLE} SET version_num = :head"), {"head": head_revision()}
            )
            session.commit()


@pytest.mark.usefixtures("stale_schema")
def test_readyz_is_503_when_the_schema_is_not_at_head(client: TestClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["checks"]["schema"] == "at older" and "sweepserve migrate" in problem["detail"]


def test_readyz_is_503_when_the_database_is_unreachable(client: TestClient) -> None:
    engine = client.app.state.engine  # type: ignore[attr-defined]
    client.app.state.engine = create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")  # type: ignore[attr-defined]
    try:
        response = client.get("/readyz")
    finally:
        client.app.state.engine = engine  # type: ignore[attr-defined]
    assert response.status_code == 503
    problem = response.json()
    assert problem["checks"]["database"].startswith("unreachable") and "database" in problem["detail"]
    assert client.get("/readyz").status_code == 200  # and ready again once it is back
