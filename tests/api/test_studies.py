"""GET /jobs/{id}/optuna: the job as an Optuna study file, opened by Optuna itself and served by
the real optuna-dashboard (its HTTP API on a loopback port)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import optuna
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.store.tables import EpochMetric
from tests.api.test_jobs import finished_with, set_trials, submit


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def study_of(client: TestClient, job_id: int, tmp_path: Path) -> Path:
    response = client.get(f"/jobs/{job_id}/optuna")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/vnd.sqlite3"
    assert f'filename="job-{job_id}.optuna.db"' in response.headers["content-disposition"]
    path = tmp_path / "study.db"
    path.write_bytes(response.content)
    return path


def finished_sweep(client: TestClient, sessions: sessionmaker[Session]) -> dict[str, Any]:
    job = submit(client, {"name": "lr", "search": {"space": {"lr": [0.1, 0.2, 0.4]}}, "train": {"epochs": 2}})
    set_trials(
        sessions,
        job["id"],
        {0: finished_with(0.7), 1: finished_with(0.8), 2: {"status": "pruned", "val_accuracy": 0.3}},
    )
    with sessions() as session:
        for trial, curve in zip(job["trials"], ([0.5, 0.7], [0.6, 0.8], [0.3]), strict=True):
            session.add_all(EpochMetric(trial_id=trial["id"], epoch=e, val_accuracy=a, train_loss=1.0,
                                        train_accuracy=0.5, val_loss=1.0, lr=0.1, seconds=1.0,
                                        images_per_second=1.0, attempt=1)
                            for e, a in enumerate(curve, start=1))  # fmt: skip
        session.commit()
    return job


def test_the_study_holds_params_values_and_curves(
    client: TestClient, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    job = finished_sweep(client, sessions)
    study = optuna.load_study(
        study_name=f"job {job['id']}: lr", storage=f"sqlite:///{study_of(client, job['id'], tmp_path)}"
    )
    assert [(t.params, t.state.name, t.value) for t in study.trials] == [
        ({"lr": 0.1}, "COMPLETE", 0.7), ({"lr": 0.2}, "COMPLETE", 0.8), ({"lr": 0.4}, "PRUNED", None)
    ]  # fmt: skip
    assert study.trials[1].intermediate_values == {1: 0.6, 2: 0.8}
    assert study.trials[2].intermediate_values == {1: 0.3}
    assert study.best_trial.user_attrs["trial_ids"] == [job["trials"][1]["id"]]
    assert client.get("/jobs/999/optuna").status_code == 404


@pytest.mark.slow
def test_optuna_dashboard_loads_the_exported_study(
    client: TestClient, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    pytest.importorskip("optuna_dashboard", reason="pip install optuna-dashboard (the dev extra has it)")
    job = finished_sweep(client, sessions)
    path = study_of(client, job["id"], tmp_path)
    port = free_port()
    command = [sys.executable, "-c", "from optuna_dashboard._cli import main; main()",
               f"sqlite:///{path}", "--host", "127.0.0.1", "--port", str(port), "--quiet"]  # fmt: skip
    dashboard = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}"
        studies = _wait_for_json(f"{base}/api/studies", dashboard)
        (study,) = studies["study_summaries"]
        assert study["study_name"] == f"job {job['id']}: lr"
        detail = httpx.get(f"{base}/api/studies/{study['study_id']}", timeout=30).json()
        assert [t["state"] for t in detail["trials"]] == ["Complete", "Complete", "Pruned"]
        assert detail["trials"][1]["values"] == [0.8]
        assert [p["name"] for p in detail["trials"][0]["params"]] == ["lr"]
    finally:
        dashboard.terminate()
        dashboard.wait(timeout=30)


def _wait_for_json(url: str, process: subprocess.Popen[bytes]) -> Any:
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, process.stderr.read().decode() if process.stderr else "exited"
        try:
            return httpx.get(url, timeout=5).raise_for_status().json()
        except httpx.HTTPError:
            assert time.monotonic() < deadline, "optuna-dashboard did not answer"
            time.sleep(0.2)
