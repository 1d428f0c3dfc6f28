"""Checkpoints in S3-compatible object storage, against a real S3 protocol server on loopback
(moto's server mode) through the real boto3 client: workers on "different machines" (different
local folders) share nothing but PostgreSQL and the bucket.

- a 3-trial job on two workers, one killed -9 mid-trial: every trial succeeds, the killed one
  resumes from its last epoch on the other worker, history without gaps or duplicates;
- /predict serves a model that only the bucket holds (the API's local folder is empty), and
  DELETE /jobs/{id} removes the job's objects;
- a truncated or tampered object is refused with a clear error, by a resuming worker and by
  the predictor.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.api.main import create_app
from app.settings import Settings
from app.store.artifacts import open_store
from app.store.checkpoints import checkpoint_blobs
from app.store.db import transaction
from app.store.jobs import submit_job
from app.store.tables import RegisteredModel, Trial
from app.worker.loop import run_worker
from tests.postgres import ONE_DATABASE
from tests.s3 import s3_client
from tests.served_models import png_files
from tests.workers import (
    SMALLER_DATA,
    epoch_rows,
    start_worker,
    stop_process,
    tiny_spec,
    trial_row,
    wait_for,
    worker_thread,
)

EPOCHS = 2  # the killed trial has an epoch behind it and one to go
POSTGRES_ONLY = pytest.mark.parametrize(
    "db_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)


def _submit(
    factory: sessionmaker[Session], seeds: tuple[int, ...], epochs: int = EPOCHS
) -> tuple[int, list[int]]:
    with transaction(factory) as session:
        job, _ = submit_job(session, tiny_spec(epochs=epochs, seeds=seeds, data=SMALLER_DATA))
        return job.id, [t.id for t in job.trials]


def _trials(factory: sessionmaker[Session], job_id: int) -> list[Trial]:
    with factory() as session:
        return list(session.scalars(select(Trial).where(Trial.job_id == job_id).order_by(Trial.index)))


def _mid_trial_on(factory: sessionmaker[Session], job_id: int, pid: int) -> int | None:
    """A trial the worker with this pid is training, with at least one epoch and more to go."""
    for trial in _trials(factory, job_id):
        held = trial.status == "running" and f":{pid}:" in (trial.worker_id or "")
        if held and 1 <= trial.epochs_done < trial.epochs:
            return trial.id
    return None


def _kill_9(proc: subprocess.Popen[bytes]) -> None:
    os.kill(proc.pid, signal.SIGKILL)  # the worker this test started, by its pid
    proc.wait(timeout=30)


@POSTGRES_ONLY
@pytest.mark.slow
def test_two_machines_share_only_postgresql_and_a_bucket(
    factory: sessionmaker[Session],
    worker_settings: Callable[..., Settings],
    s3_url: str,
    data_dir: Path,
    tmp_path: Path,
) -> None:
    machine = {
        name: worker_settings(
            data_dir=data_dir, artifacts_dir=s3_url, cache_dir=tmp_path / name, lease_seconds=2.0
        )
        for name in ("a", "b", "api")
    }
    job_id, _ = _submit(factory, seeds=(0, 1, 2))
    logs = {name: tmp_path / f"{name}.log" for name in ("a", "b")}
    a = start_worker(machine["a"], logs["a"])
    b = None
    try:
        killed: list[int] = []

        def a_is_mid_trial() -> bool:
            trial = _mid_trial_on(factory, job_id, a.pid)
            killed.extend([trial] if trial else [])
            return trial is not None

        wait_for(a_is_mid_trial, a, logs["a"])
        _kill_9(a)
        assert a.returncode == -signal.SIGKILL
        b = start_worker(machine["b"], logs["b"])
        wait_for(lambda: all(t.finished_at for t in _trials(factory, job_id)), b, logs["b"])
    finally:
        for proc in (a, b):
            if proc is not None:
                stop_process(proc, kill=True)
    [killed_trial] = killed
    trials = _trials(factory, job_id)
    for trial in trials:
        assert (trial.status, trial.epochs_done) == ("succeeded", EPOCHS), trial.error
        assert [row.epoch for row in epoch_rows(factory, trial.id)] == list(range(1, EPOCHS + 1))
    resumed = trial_row(factory, killed_trial)
    assert resumed.attempts == 2
    attempts = [row.attempt for row in epoch_rows(factory, killed_trial)]
    assert attempts[0] == 1 and attempts[-1] == 2  # trained on A, finished on B from A's last epoch
    assert "resuming from jobs/" in logs["b"].read_text()

    store = open_store(machine["api"])
    with factory() as session:
        named = {trial.id: checkpoint_blobs(session, trial.id) for trial in trials}
    # The bucket holds exactly what the rows name: superseded epochs and A's attempt were deleted.
    expected = {blob.key for blobs in named.values() for blob in blobs.values()}
    assert set(store.keys(f"jobs/{job_id}/")) == expected
    assert all("/attempt-2/" in blob.key for blob in named[killed_trial].values())

    api_cache = tmp_path / "api"
    assert not api_cache.exists()  # the API's machine has nothing local
    with TestClient(create_app(machine["api"])) as client:
        answer = client.post("/predict", files=[("file", ("0.png", png_files(1)[0], "image/png"))])
        assert answer.status_code == 200, answer.text
        with factory() as session:
            model = session.get(RegisteredModel, answer.json()["model"]["id"])
            assert model is not None and model.sha256 is not None
            assert model.path == named[model.trial_id]["best"].key
        assert (api_cache / "objects" / model.path).is_file()  # downloaded, verified, cached

        assert client.delete(f"/jobs/{job_id}").status_code == 204
    assert store.keys(f"jobs/{job_id}/") == {}


def damage(store_url: str, key: str, how: str) -> None:
    bucket, _, prefix = store_url.removeprefix("s3://").partition("/")
    client = s3_client()
    name = f"{prefix}/{key}"
    data = client.get_object(Bucket=bucket, Key=name)["Body"].read()  # type: ignore[attr-defined]
    damaged = (
        data[: len(data) // 2] if how == "truncate" else data[:100] + bytes([data[100] ^ 1]) + data[101:]
    )
    client.put_object(Bucket=bucket, Key=name, Body=damaged)  # type: ignore[attr-defined]


@ONE_DATABASE
@pytest.mark.slow
@pytest.mark.parametrize("how", ["truncate", "tamper"])
def test_a_damaged_checkpoint_is_refused_with_a_clear_error(
    factory: sessionmaker[Session],
    worker_settings: Callable[..., Settings],
    expire_lease: Callable[[int], None],
    s3_url: str,
    data_dir: Path,
    tmp_path: Path,
    one_thread: None,
    how: str,
) -> None:
    first = worker_settings(data_dir=data_dir, artifacts_dir=s3_url, cache_dir=tmp_path / "first")
    _, [trial_id] = _submit(factory, seeds=(0,), epochs=4)  # stopped long before its end
    stop = threading.Event()
    thread, errors = worker_thread(first, max_trials=1, stop=stop)
    try:
        wait_for(lambda: len(epoch_rows(factory, trial_id)) >= 1 or not thread.is_alive())
    finally:
        stop.set()  # the worker stops at once and writes nothing more, like a machine going away
        thread.join(timeout=60)
    # Stopped, the worker gave the trial back (queued), or left it running to its lease.
    assert errors == [] and trial_row(factory, trial_id).status in ("queued", "running")
    with factory() as session:
        last = checkpoint_blobs(session, trial_id)["last"]
    damage(s3_url, last.key, how)
    expire_lease(trial_id)

    second = worker_settings(data_dir=data_dir, artifacts_dir=s3_url, cache_dir=tmp_path / "second")
    run_worker(second, max_trials=1)
    trial = trial_row(factory, trial_id)
    assert trial.status == "queued" and trial.attempts == 2  # the attempt failed; one is left
    assert trial.error is not None, trial
    assert trial.error.startswith("ArtifactCorrupt: checkpoint attempt-1/epoch-"), trial.error
    assert ("truncated" if how == "truncate" else "was modified") in trial.error
    assert len(epoch_rows(factory, trial_id)) == trial.epochs_done  # nothing trained on it
    assert not list((tmp_path / "second" / "objects").rglob("last.pt"))  # never kept
