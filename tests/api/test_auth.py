"""API key auth: every route but the probes (and the data-free pages and docs) needs the Bearer key."""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.api import auth
from app.api.main import create_app
from app.settings import Settings

KEY = "correct horse battery staple"
PUBLIC = {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/v2/health/live"), ("GET", "/v2/health/ready")}
PAGES = ["/", "/ui/jobs/1", "/ui/predict", "/static/job.js", "/docs", "/openapi.json"]


def make_app(tmp_path: Path, api_key: str | None) -> FastAPI:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=f"sqlite:///{tmp_path / 'auth.db'}",
        artifacts_dir=tmp_path / "artifacts",
        allow_download=False,
        api_key=api_key,
    )
    return create_app(settings)


@pytest.fixture
def locked(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(make_app(tmp_path, KEY)) as client:
        yield client


@pytest.fixture
def open_app(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(make_app(tmp_path, None)) as client:
        yield client


def api_operations(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path with ids filled in) of every documented operation, whoever added it."""
    return [
        (method.upper(), re.sub(r"\{[^}]+\}", "1", path))
        for path, item in app.openapi()["paths"].items()
        for method in item
    ]


def assert_unauthorized(response: object, error: str | None) -> None:
    assert response.status_code == 401, response.text  # type: ignore[attr-defined]
    assert response.headers["content-type"].startswith("application/problem+json")  # type: ignore[attr-defined]
    challenge = response.headers["www-authenticate"]  # type: ignore[attr-defined]
    assert challenge.startswith("Bearer ")
    assert (f'error="{error}"' in challenge) if error else ("error=" not in challenge)
    body = response.json()  # type: ignore[attr-defined]
    assert body["status"] == 401 and body["title"] == "Unauthorized" and "key" in body["detail"].lower()


def test_every_api_route_but_the_probes_needs_the_key(locked: TestClient) -> None:
    operations = api_operations(locked.app)  # type: ignore[arg-type]
    assert {("GET", "/metrics"), ("GET", "/jobs"), ("POST", "/predict"), ("GET", "/jobs/1/history")} <= set(
        operations
    )
    for method, path in operations:
        response = locked.request(method, path)
        if (method, path) in PUBLIC:
            assert response.status_code != 401, path
        else:
            assert_unauthorized(response, None)


def test_a_wrong_key_or_scheme_is_refused(locked: TestClient) -> None:
    assert_unauthorized(locked.get("/jobs", headers={"Authorization": "Bearer nope"}), "invalid_token")
    assert_unauthorized(locked.get("/jobs", headers={"Authorization": f"Bearer {KEY}x"}), "invalid_token")
    assert_unauthorized(locked.get("/jobs", headers={"Authorization": f"Basic {KEY}"}), None)
    assert_unauthorized(locked.get("/metrics", headers={"Authorization": "Bearer "}), None)


def test_the_right_key_opens_the_api_and_metrics(locked: TestClient) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    assert locked.get("/jobs", headers=headers).json() == {"items": [], "next_cursor": None}
    submitted = locked.post("/jobs", json={"train": {"epochs": 1}}, headers=headers)
    assert submitted.status_code == 202
    assert locked.get(f"/jobs/{submitted.json()['id']}/history", headers=headers).status_code == 200
    metrics = locked.get("/metrics", headers={"Authorization": f"bearer {KEY}"})  # the scheme is case-blind
    assert metrics.status_code == 200 and "sweepserve_queue_depth 1.0" in metrics.text


def test_probes_pages_and_docs_stay_open(locked: TestClient) -> None:
    assert locked.get("/healthz").json() == {"status": "ok"}
    assert locked.get("/readyz").status_code == 200
    for path in PAGES:
        assert locked.get(path).status_code == 200, path


def test_without_a_configured_key_nothing_is_locked(open_app: TestClient) -> None:
    assert open_app.get("/jobs").status_code == 200
    assert open_app.get("/metrics").status_code == 200
    assert open_app.get("/jobs", headers={"Authorization": "Bearer anything"}).status_code == 200


def test_keys_are_compared_in_constant_time(locked: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    assert locked.get("/jobs", headers={"Authorization": "Bearer guess"}).status_code == 401
    assert compared == [(b"guess", KEY.encode())]


def test_the_openapi_schema_documents_the_bearer_scheme_and_the_401(locked: TestClient) -> None:
    schema = locked.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["ApiKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": auth.bearer.model.description,
    }
    jobs = schema["paths"]["/jobs"]["get"]
    assert {"ApiKey": []} in jobs["security"] and "401" in jobs["responses"]
    assert "security" not in schema["paths"]["/healthz"]["get"]


def test_auth_is_checked_before_the_body_is_parsed_or_measured(locked: TestClient) -> None:
    """A malformed or oversized body without a key is a 401, not a 422 or 413 that reveals the rules."""
    for body in (b"{not json", b'{"train": {"epochs": "ten"}}'):
        response = locked.post("/jobs", content=body, headers={"Content-Type": "application/json"})
        assert_unauthorized(response, None)
    oversized = locked.post("/predict", content=b"x" * (9 * 1024 * 1024))
    assert_unauthorized(oversized, None)
    wrong = locked.post("/jobs", content=b"{not json", headers={"Authorization": "Bearer nope"})
    assert_unauthorized(wrong, "invalid_token")


def test_readyz_details_need_the_key_when_one_is_set(locked: TestClient, open_app: TestClient) -> None:
    anonymous = locked.get("/readyz")
    assert anonymous.status_code == 200 and anonymous.json() == {"status": "ready"}
    keyed = locked.get("/readyz", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert keyed["checks"]["schema"] == "at head" and "model" in keyed["checks"]
    assert "checks" in open_app.get("/readyz").json()  # no key configured: nothing to hide
