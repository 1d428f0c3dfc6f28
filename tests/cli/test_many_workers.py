"""Many workers, on SQLite and PostgreSQL: jobs submitted through the API are served by priority,
then in submission order; `sweepserve serve --workers 2` trains one sweep with two processes.
(`worker --gpus 0,1` on a machine without those GPUs: tests/worker/test_worker_devices.py.)"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.api.main import create_app
from app.settings import Settings
from app.store.tables import Job, Trial
from app.worker.loop import run_worker
from tests.workers import (
    SMALLER_DATA,
    TINY_TRAIN,
    start_process,
    stop_process,
    wait_for,
    worker_rows,
)


def _claimed(factory: sessionmaker[Session]) -> set[tuple[str, int]]:
    """(job name, trial index) of every trial a worker has claimed so far."""
    with factory() as session:
        rows = session.execute(select(Job.name, Trial.index).join(Job).where(Trial.attempts > 0))
        return {(name, index) for name, index in rows}


def test_jobs_are_served_by_priority_then_in_submission_order(
    factory: sessionmaker[Session], worker_settings: Callable[..., Settings]
) -> None:
    # No data set in data_dir: each claimed trial fails at once (max_attempts 1), which is all
    # this test needs to see the order in which real workers claim.
    settings = worker_settings()
    jobs = [("first", 0), ("urgent", 5), ("second", 0), ("urgent too", 5), ("background", -1)]
    with TestClient(create_app(settings)) as client:
        for name, priority in jobs:
            body = {
                "name": name,
                "search": {"space": {"seed": [0, 1]}},
                "priority": priority,
                "max_attempts": 1,
            }
            assert client.post("/jobs", json=body).status_code == 202
    expected = [
        ("urgent", 0), ("urgent", 1), ("urgent too", 0), ("urgent too", 1),
        ("first", 0), ("first", 1), ("second", 0), ("second", 1), ("background", 0), ("background", 1),
    ]  # fmt: skip
    order: list[tuple[str, int]] = []
    for _ in expected:
        run_worker(settings, max_trials=1)
        [new] = _claimed(factory) - set(order)
        order.append(new)
    assert order == expected


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_serve_with_two_workers_trains_one_sweep_on_both(
    factory: sessionmaker[Session], worker_settings: Callable[..., Settings], data_dir: Path, tmp_path: Path
) -> None:
    settings = worker_settings(data_dir=data_dir)
    port, log_file = _free_port(), tmp_path / "serve.log"
    serve = start_process(settings, log_file, "-m", "app.cli", "serve", "--workers", "2", "--port", str(port))
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(f"{base}/healthz"), serve, log_file)
        body = {
            "search": {"space": {"seed": [0, 1, 2, 3]}},
            "train": {**TINY_TRAIN, "epochs": 1},
            "data": SMALLER_DATA,
        }
        job_id = httpx.post(f"{base}/jobs", json=body).json()["id"]
        wait_for(
            lambda: httpx.get(f"{base}/jobs/{job_id}").json()["finished_at"] is not None, serve, log_file
        )
        job = httpx.get(f"{base}/jobs/{job_id}").json()
        workers_seen = {w.id for w in worker_rows(factory)}
    finally:
        stop_process(serve, timeout=60)  # SIGTERM: serve stops its workers, then exits
    assert serve.returncode == 0, log_file.read_text()[-4000:]
    assert job["status"] == "succeeded" and job["progress"]["succeeded"] == 4
    with factory() as session:
        claimed_by = set(session.scalars(select(Trial.worker_id).where(Trial.job_id == job_id)))
    assert len(workers_seen) == 2 and claimed_by == workers_seen  # both workers trained trials
    assert worker_rows(factory) == []  # both stopped cleanly and unregistered


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False
