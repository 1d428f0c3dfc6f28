"""Steering routes on SQLite and PostgreSQL: extend, add trials, retry; what each refuses and why."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import func, update
from sqlalchemy.orm import Session, sessionmaker

from app.settings import Settings
from app.store.artifacts import attempt_dir, trial_dir
from app.store.jobs import refresh_job_status
from app.store.tables import Trial

PROBLEM = "application/problem+json"
BODY = {"search": {"strategy": "random", "space": {"lr": {"low": 0.01, "high": 0.1}}, "trials": 2},
        "train": {"epochs": 2}}  # fmt: skip


def _submit(client: TestClient) -> dict[str, Any]:
    response = client.post("/jobs", json=BODY)
    assert response.status_code == 202, response.text
    return response.json()


def _finish(sessions: sessionmaker[Session], job_id: int, status: str, accuracies: list[float]) -> None:
    with sessions() as session:
        for index, accuracy in enumerate(accuracies):
            values = {"status": status, "val_accuracy": accuracy, "epochs_done": 2, "finished_at": func.now(),
                      "started_at": func.now(), "attempts": 1}  # fmt: skip
            session.execute(
                update(Trial).where(Trial.job_id == job_id, Trial.index == index).values(**values)
            )
        refresh_job_status(session, job_id)
        session.commit()


def _checkpoint(settings: Settings, job_id: int, trial_id: int) -> None:
    folder = attempt_dir(trial_dir(settings.artifacts_dir, job_id, trial_id), 1)
    folder.mkdir(parents=True)
    (folder / "last.pt").write_bytes(b"")


def _problem(response: Any, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    assert all(w in response.json()["detail"] for w in words), response.json()


def test_extend_top_k_requeues_the_best_with_a_checkpoint(
    client: TestClient, sessions: sessionmaker[Session], settings: Settings
) -> None:
    job = _submit(client)
    first, second = (t["id"] for t in job["trials"])
    _finish(sessions, job["id"], "succeeded", [0.5, 0.7])
    _problem(client.post(f"/jobs/{job['id']}/extend", json={"epochs": 4, "top_k": 1}), 409, "no checkpoint")
    _checkpoint(settings, job["id"], second)
    _problem(
        client.post(f"/jobs/{job['id']}/extend", json={"epochs": 2, "top_k": 1}), 409, "extend it to more"
    )
    response = client.post(f"/jobs/{job['id']}/extend", json={"epochs": 4, "top_k": 1})
    assert response.status_code == 202, response.text
    out = response.json()
    assert out["status"] == "running" and out["finished_at"] is None
    trials = {t["id"]: t for t in out["trials"]}
    assert (trials[second]["status"], trials[second]["epochs"], trials[second]["extensions"]) == (
        "queued",
        4,
        1,
    )
    assert (trials[first]["status"], trials[first]["epochs"]) == ("succeeded", 2)
    _problem(
        client.post(f"/jobs/{job['id']}/extend", json={"epochs": 5, "trial_ids": [second]}), 409, "queued"
    )


def test_extend_bodies_are_validated(client: TestClient) -> None:
    job = _submit(client)
    for body in ({"epochs": 3}, {"epochs": 3, "top_k": 1, "trial_ids": [1]}, {"epochs": 0, "top_k": 1},
                 {"epochs": 3, "top_k": 1, "lr": 1}):  # fmt: skip
        _problem(client.post(f"/jobs/{job['id']}/extend", json=body), 422)
    _problem(
        client.post(f"/jobs/{job['id']}/extend", json={"epochs": 3, "trial_ids": [10**6]}), 422, "not in job"
    )
    _problem(client.post("/jobs/999/extend", json={"epochs": 3, "top_k": 1}), 404)


def test_added_points_are_validated_like_the_space_and_duplicates_refused(client: TestClient) -> None:
    job = _submit(client)
    url = f"/jobs/{job['id']}/trials"
    _problem(client.post(url, json={"points": [{"lr": 0.5}]}), 422, "[0.01, 0.1]")
    _problem(client.post(url, json={"points": [{"nope": 1}]}), 422, "not train fields")
    _problem(client.post(url, json={"points": [{"lr": 0.05, "epochs": -1}]}), 422, "points[0]")
    existing = job["trials"][0]["params"]
    _problem(client.post(url, json={"points": [existing]}), 409, "same config")
    _problem(client.post(url, json={"points": [{"lr": 0.05}, {"lr": 0.05}]}), 409, "points[0]")
    response = client.post(url, json={"points": [{"lr": 0.05}, {"lr": 0.06, "batch_size": 64}]})
    assert response.status_code == 202, response.text
    assert [(t["index"], t["status"], t["params"]) for t in response.json()["trials"][2:]] == [
        (2, "queued", {"lr": 0.05}),
        (3, "queued", {"lr": 0.06, "batch_size": 64}),
    ]
    assert client.get(f"/jobs/{job['id']}").json()["progress"]["queued"] == 4


def test_retry_takes_failed_or_cancelled_trials_only(
    client: TestClient, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    job = _submit(client)
    first = job["trials"][0]["id"]
    _problem(client.post(f"/jobs/{job['id']}/trials/{first}/retry"), 409, "queued")
    _finish(sessions, job["id"], "failed", [0.1, 0.1])
    assert client.get(f"/jobs/{job['id']}").json()["status"] == "failed"
    response = client.post(f"/jobs/{job['id']}/trials/{first}/retry")
    assert response.status_code == 202, response.text
    retried = next(t for t in response.json()["trials"] if t["id"] == first)
    assert (retried["status"], retried["error"]) == ("queued", None)
    assert response.json()["status"] == "running"
    _problem(client.post(f"/jobs/{job['id']}/trials/999999/retry"), 404)
