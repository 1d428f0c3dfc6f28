"""Faults inside a trial, on SQLite and PostgreSQL: a trial that raises (NaN loss, bad config) fails
after max_attempts with its error (out of memory: at once) while the other trials go on; a full artifacts
disk fails the trial clearly and leaves the database consistent; a finish whose commit
acknowledgement was lost is retried harmlessly."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

import ml.engine
from app.errors import InvalidTransition, LeaseLost
from app.settings import Settings
from app.store.claims import Outcome, claim_trial, finish_trial
from app.store.db import transaction
from app.store.jobs import submit_job
from app.store.tables import EpochMetric, Job, RegisteredModel, Trial
from app.worker.loop import run_worker
from ml.job import JobSpec
from tests.postgres import ONE_DATABASE
from tests.workers import SMALLER_DATA, TINY_TRAIN, TRAIN_TIMEOUT_S, tiny_spec, wait_for, worker_thread

DEVICE_BATCH_LIMIT = 32  # the injected out-of-memory: a "device" that holds at most this many images


def _submit(factory: sessionmaker[Session], spec: JobSpec) -> int:
    with transaction(factory) as session:
        job, _ = submit_job(session, spec)
        return job.id


def _trials(factory: sessionmaker[Session], job_id: int) -> list[Trial]:
    with factory() as session:
        return list(session.scalars(select(Trial).where(Trial.job_id == job_id).order_by(Trial.index)))


def _count(factory: sessionmaker[Session], table: type, *where: Any) -> int:
    with factory() as session:
        return session.scalar(select(func.count()).select_from(table).where(*where)) or 0


# --- a lost commit acknowledgement ------------------------------------------------------------------


def test_finish_is_idempotent_for_the_same_attempt_only(
    factory: sessionmaker[Session], submit: Callable[..., list[int]]
) -> None:
    [trial_id] = submit(1)
    with transaction(factory) as session:
        claim = claim_trial(session, "w", 60.0)
    assert claim is not None
    history = [{"epoch": 1, "train_loss": 1.0, "train_accuracy": 0.5, "val_loss": 1.0, "val_accuracy": 0.6,
                "lr": 0.1, "seconds": 1.0, "images_per_second": 1.0}]  # fmt: skip
    outcome = Outcome("succeeded", history, 0.5, None, "jobs/1/trials/1/attempt-1/best.pt")
    for _ in range(2):  # the second call is the worker's retry after the connection dropped post-commit
        with transaction(factory) as session:
            finish_trial(session, claim, outcome)
    assert _count(factory, RegisteredModel) == 1 and _count(factory, EpochMetric) == 1
    assert _trials(factory, _job_of(factory, trial_id))[0].status == "succeeded"
    # Another attempt's finish is still refused, and so is a different ending by the same attempt.
    with pytest.raises(LeaseLost), transaction(factory) as session:
        finish_trial(session, replace(claim, attempt=2), outcome)
    with pytest.raises(InvalidTransition, match="cannot become pruned"), transaction(factory) as session:
        finish_trial(session, claim, Outcome("pruned", history, 0.5, None, None))


def _all_finished(factory: sessionmaker[Session], job_ids: Iterable[int]) -> bool:
    with factory() as session:
        return None not in session.scalars(select(Job.finished_at).where(Job.id.in_(list(job_ids))))


def _job_of(factory: sessionmaker[Session], trial_id: int) -> int:
    with factory() as session:
        return session.scalar(select(Trial.job_id).where(Trial.id == trial_id)) or 0


# --- trials that raise ----------------------------------------------------------------------------


@pytest.fixture
def device_memory_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Training batches larger than DEVICE_BATCH_LIMIT raise the error CUDA raises when out of memory."""
    real = ml.engine.train_one_epoch

    def limited(model: Any, optimizer: Any, scheduler: Any, batches: Any, **kwargs: Any) -> Any:
        def checked() -> Iterator[Any]:
            for x, y in batches:
                if len(y) > DEVICE_BATCH_LIMIT:
                    raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate a batch of {len(y)}")
                yield x, y

        return real(model, optimizer, scheduler, checked(), **kwargs)

    monkeypatch.setattr(ml.engine, "train_one_epoch", limited)


@ONE_DATABASE
@pytest.mark.slow
def test_raising_trials_fail_after_max_attempts_with_their_error_while_the_others_go_on(
    factory: sessionmaker[Session],
    worker_settings: Callable[..., Settings],
    data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    device_memory_limit: None,
    one_thread: None,
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # no cached ImageNet weights
    base = {"data": SMALLER_DATA, "max_attempts": 2}
    jobs = {
        # lr 10 with plain SGD on batches of 4: the loss is NaN by batch 20 of the first epoch.
        "nan": {"search": {"space": {"lr": [1e-3, 10.0]}},
                "train": {**TINY_TRAIN, "optimizer": "sgd", "batch_size": 4, "epochs": 1,
                          "schedule": "constant", "warmup_fraction": 0.0}},
        "bad config": {"train": {**TINY_TRAIN, "epochs": 1, "pretrained": True}},
        "oom": {"train": {**TINY_TRAIN, "epochs": 1, "batch_size": 64}},
        "fine": {"train": {**TINY_TRAIN, "epochs": 1}},
    }  # fmt: skip
    ids = {name: _submit(factory, JobSpec.model_validate({**base, **body})) for name, body in jobs.items()}
    stop = threading.Event()
    thread, errors = worker_thread(worker_settings(data_dir=data_dir), max_trials=None, stop=stop)
    try:
        wait_for(lambda: _all_finished(factory, ids.values()) or not thread.is_alive())
    finally:
        stop.set()
        thread.join(timeout=TRAIN_TIMEOUT_S)
    assert errors == []

    nan_ok, nan = _trials(factory, ids["nan"])
    [bad_config], [oom], [fine] = (_trials(factory, ids[name]) for name in ("bad config", "oom", "fine"))
    for trial, error, attempts in [
        (nan, "FloatingPointError: loss became ", 2),
        (bad_config, "WeightsUnavailable: ", 2),
        (oom, "OutOfMemory: batch_size 64 does not fit", 1),  # an out-of-memory is not retried
    ]:
        assert (trial.status, trial.attempts) == ("failed", attempts)
        assert trial.error is not None and trial.error.startswith(error), trial.error
        assert trial.finished_at is not None and trial.test_accuracy is None
    assert "downloads are disabled" in (bad_config.error or "")
    for trial in (nan_ok, fine):  # trained in between the failing attempts, undisturbed
        assert (trial.status, trial.attempts, trial.epochs_done) == ("succeeded", 1, 1), trial.error
    with factory() as session:
        statuses = {name: session.scalar(select(Job.status).where(Job.id == i)) for name, i in ids.items()}
    assert statuses == {"nan": "succeeded", "bad config": "failed", "oom": "failed", "fine": "succeeded"}
    assert _count(factory, RegisteredModel) == 2


# --- a full disk ------------------------------------------------------------------------------------


@contextlib.contextmanager
def _full_disk(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A 2 MiB tmpfs on `folder` (far too small for a checkpoint) when mounting works, else a
    checkpoint write that fails with ENOSPC. Yields which one; unmounts on exit."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = (
        os.geteuid() == 0
        and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)], capture_output=True, check=False
        ).returncode
        == 0
    )
    if not mounted:

        def no_space(obj: Any, path: Path) -> None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

        monkeypatch.setattr("ml.trial_state.save_atomic", no_space)
    try:
        yield "tmpfs" if mounted else "injected"
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], check=True)


@ONE_DATABASE
@pytest.mark.slow
def test_a_full_artifacts_disk_fails_the_trial_clearly_and_keeps_the_database_consistent(
    factory: sessionmaker[Session],
    worker_settings: Callable[..., Settings],
    data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    one_thread: None,
) -> None:
    job_id = _submit(factory, tiny_spec(epochs=2, max_attempts=2, data=SMALLER_DATA))
    settings = worker_settings(data_dir=data_dir, artifacts_dir=tmp_path / "artifacts")
    with _full_disk(settings.artifacts_dir, monkeypatch) as how:
        run_worker(settings, max_trials=2)
        leftovers = [p.name for p in settings.artifacts_dir.rglob("*") if p.is_file()]
    [trial] = _trials(factory, job_id)
    assert (trial.status, trial.attempts, trial.epochs_done, trial.val_accuracy) == ("failed", 2, 0, None), (
        how
    )
    assert trial.error is not None and trial.error.startswith("OSError: [Errno 28] No space left on device")
    assert (
        _count(factory, EpochMetric, EpochMetric.trial_id == trial.id) == 0
    )  # no epoch without its checkpoint
    assert _count(factory, RegisteredModel) == 0
    with factory() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.status == "failed" and job.finished_at is not None
    assert leftovers == []  # no half-written temp files fill the disk for the next trial
