"""Malformed requests are the client's fault: always a 4xx problem, never a 5xx."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from app.api.routes.jobs import encode_cursor

BIG = "9" * 40  # far beyond int64


def random_search(space: str) -> str:
    """A one-trial random search over `space` (raw JSON, so NaN and 1e400 reach the server as sent)."""
    return '{"search": {"strategy": "random", "trials": 1, "space": ' + space + "}}"


BAD_BODIES: list[tuple[str, str | bytes]] = [
    ("application/json", "{"),
    ("application/json", ""),
    ("application/json", "[]"),
    ("application/json", "null"),
    ("application/json", '"a job"'),
    ("application/json", "12"),
    ("application/json", '{"name": 12}'),
    ("application/json", "{" + '"a": {' * 5000 + "}" * 5000 + "}"),
    ("application/json", '{"search": ' + "[" * 5000 + "]" * 5000 + "}"),
    ("application/json", '{"train": {"augment": [[[{"crop": {"x": [null]}}]]]}}'),
    ("application/json", '{"train": {"epochs": 1e400}}'),
    ("application/json", f'{{"train": {{"epochs": {BIG}}}}}'),
    ("application/json", f'{{"train": {{"seed": {BIG}}}}}'),
    ("application/json", f'{{"priority": -{BIG}}}'),
    ("application/json", '{"train": {"lr": NaN}}'),
    ("application/json", '{"train": {"lr": Infinity}}'),
    ("application/json", '{"train": {"lr": 1e-400}}'),
    ("application/json", '{"search": {"space": {"lr": [NaN, Infinity]}}}'),
    (
        "application/json",
        random_search('{"epochs": {"low": 1, "high": 1e400, "integer": true}}'),
    ),
    ("application/json", random_search('{"lr": {"low": -1e308, "high": 1e308}}')),
    (
        "application/json",
        random_search('{"epochs": {"low": 1, "high": 1e308, "integer": true}}'),
    ),
    ("application/json", random_search('{"lr": {"low": NaN, "high": 1}}')),
    ("application/json", '{"search": {"space": {"lr": [{"low": 0.1, "high": 1}]}}}'),
    ("application/json", '{"search": {"space": {"lr": [[0.1]], "arch": [null]}}}'),
    ("application/json", '{"search": {"space": {"__class__": [1], "model_config": [2]}}}'),
    ("application/json", '{"name": "' + "x" * 100_000 + '"}'),
    ("application/json", '{"name": "nul \\u0000 inside"}'),
    ("application/json", '{"name": "lone surrogate \\ud800"}'),
    ("application/json", '{"name": "\\u202e\\u0007 control"}'),
    ("application/json", b'{"name": "\xff\xfe not utf-8"}'),
    ("text/plain", '{"name": "plain"}'),
    ("application/x-www-form-urlencoded", "name=form"),
    ("multipart/form-data; boundary=xyz", "--xyz\r\ngarbage"),
    ("application/xml", "<job/>"),
]


BAD_REQUESTS: list[tuple[str, str, dict[str, Any]]] = [
    ("GET", "/jobs/abc", {}),
    ("GET", "/jobs/1.5", {}),
    ("GET", "/jobs/-1", {}),
    ("GET", "/jobs/0", {}),
    ("GET", f"/jobs/{BIG}", {}),
    ("GET", f"/jobs/{2**63}", {}),
    ("GET", f"/jobs/{2**31}", {}),
    ("GET", f"/jobs/{2**31 - 1}", {}),
    ("GET", "/jobs/%00", {}),
    ("GET", "/jobs/1e3", {}),
    ("GET", f"/jobs/1/trials/{BIG}", {}),
    ("GET", "/jobs/1/trials/x", {}),
    ("GET", f"/jobs/{BIG}/trials/1", {}),
    ("POST", f"/jobs/{BIG}/cancel", {}),
    ("POST", "/jobs/nan/cancel", {}),
    ("DELETE", f"/jobs/{BIG}", {}),
    ("DELETE", f"/jobs/{2**31 - 1}", {}),
    ("GET", f"/jobs/{2**31 - 1}/trials/{2**31 - 1}", {}),
    ("GET", "/jobs", {"params": {"limit": BIG}}),
    ("GET", "/jobs", {"params": {"limit": "ten"}}),
    ("GET", "/jobs", {"params": {"limit": "-5"}}),
    ("GET", "/jobs", {"params": {"cursor": "\x00"}}),
    ("GET", "/jobs", {"params": {"cursor": "é" * 50}}),
    ("GET", "/jobs", {"params": {"cursor": "=" * 8}}),
    ("GET", "/jobs", {"params": {"cursor": encode_cursor(2**62)}}),
    ("GET", "/jobs", {"params": {"status": "queued' OR 1=1 --"}}),
    ("POST", "/jobs", {"json": {}, "headers": {"Idempotency-Key": "k" * 10_000}}),
    ("POST", "/jobs", {"json": {}, "headers": {"Idempotency-Key": ""}}),
    ("POST", "/jobs/1", {"json": {}}),
    ("PATCH", "/jobs/1", {"json": {}}),
]


# One app per backend for all the cases (not one per case): the cases are many, the app start is not free.
def test_malformed_job_bodies_are_4xx_problems_and_harmless(client: TestClient) -> None:
    answers = [
        (content_type, body, _post_raw(client, content_type, body)) for content_type, body in BAD_BODIES
    ]
    wrong = [
        (content_type, body[:60], r.status_code) for content_type, body, r in answers if not _is_problem(r)
    ]
    assert wrong == []
    assert client.get("/jobs").json()["items"] == []  # none of it became a job
    assert client.post("/jobs", json={"name": "fine"}).status_code == 202  # and the service still works


def test_malformed_paths_and_parameters_are_4xx_problems(client: TestClient) -> None:
    answers = [
        (method, url, kwargs, client.request(method, url, **kwargs)) for method, url, kwargs in BAD_REQUESTS
    ]
    wrong = [
        (method, url[:60], kwargs, r.status_code) for method, url, kwargs, r in answers if not _is_problem(r)
    ]
    assert wrong == []


def _post_raw(client: TestClient, content_type: str, body: str | bytes) -> Any:
    raw = body if isinstance(body, bytes) else body.encode()
    return client.post("/jobs", content=raw, headers={"Content-Type": content_type})


def _is_problem(response: Any) -> bool:
    """A 4xx problem+json whose body agrees with the status line."""
    return (
        400 <= response.status_code < 500
        and response.headers["content-type"].startswith("application/problem+json")
        and response.json()["status"] == response.status_code
    )
