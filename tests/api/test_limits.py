"""Every route's body is capped, not only /predict's: a declared or a streamed excess is a 413 problem."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi.testclient import TestClient


def _chunks(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        yield b" " * min(size, total - sent)
        sent += size


def test_a_declared_oversized_job_body_is_413(client: TestClient) -> None:
    limit = client.app.state.settings.max_body_bytes  # type: ignore[attr-defined]
    response = client.post("/jobs", content=b" " * (limit + 1), headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"
    assert str(limit) in response.json()["detail"]


def test_a_streamed_oversized_body_without_length_is_413(client: TestClient) -> None:
    limit = client.app.state.settings.max_body_bytes  # type: ignore[attr-defined]
    response = client.post("/jobs", content=_chunks(limit + 10), headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"


def test_a_body_under_the_limit_is_read(client: TestClient) -> None:
    response = client.post("/jobs", json={"name": "small", "train": {"epochs": 1}})
    assert response.status_code == 202
