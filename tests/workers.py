"""Helpers for tests that run real workers on tiny synthetic data: the recipe, worker processes
and threads, waiting on conditions, and reading rows back."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.settings import Settings
from app.store.tables import EpochMetric, Trial, Worker
from app.worker.loop import run_worker
from ml.job import JobSpec

REPO = Path(__file__).resolve().parents[1]
# The ML engine's fast test recipe (tests/ml/conftest.py): separates the synthetic classes in 2 epochs.
TINY_TRAIN: dict[str, Any] = {
    "arch": "resnet18_imagenet",
    "batch_size": 16,
    "optimizer": "adamw",
    "lr": 1e-3,
    "weight_decay": 0.05,
    "ema_decay": 0.9,
    "deterministic": True,
    "warmup_min_steps": 0,  # 15 steps an epoch: the GPU recipe's floor would keep lr near zero
    # "auto" times both precisions in each worker process; on a CPU near the margin two workers
    # could choose differently, and tests compare results across processes
    "precision": "fp32",
}
TINY_DATA = {"val_size": 60}  # of 300 synthetic train images; 50 test images
SMALLER_DATA = {"val_size": 40, "train_limit": 120}  # half the images: still ~0.75 val accuracy in 1 epoch
TRAIN_TIMEOUT_S = 240.0


# Every checkpoint kept: tests of attempts and resumes look at the files trials leave. Tests of
# the retention policy pass retention=None (the default policy) or their own.
KEEP_ALL = {"top_k": None, "keep_last": True}


def tiny_spec(
    epochs: int,
    seeds: tuple[int, ...] = (0,),
    max_attempts: int = 3,
    data: dict[str, Any] | None = None,
    retention: dict[str, Any] | None = KEEP_ALL,
    **train: Any,
) -> JobSpec:
    """A job over `seeds` with the tiny recipe; `train` overrides recipe fields."""
    return JobSpec.model_validate(
        {
            "search": {"space": {"seed": list(seeds)}},
            "train": {**TINY_TRAIN, "epochs": epochs, **train},
            "data": data or TINY_DATA,
            "max_attempts": max_attempts,
        }
        | ({} if retention is None else {"retention": retention})
    )


def worker_env(settings: Settings) -> dict[str, str]:
    """The environment of a worker (or `sweepserve serve`) process with these settings."""
    return (
        os.environ
        | {
            "PYTHONPATH": str(REPO),
            "OMP_NUM_THREADS": "1",
            "SWEEPSERVE_DATABASE_URL": settings.database_url,
            "SWEEPSERVE_ARTIFACTS_DIR": str(settings.artifacts_dir),
            "SWEEPSERVE_CACHE_DIR": str(settings.cache_dir),
            "SWEEPSERVE_DATA_DIR": str(settings.data_dir),
            "SWEEPSERVE_ALLOW_DOWNLOAD": "false",
            "SWEEPSERVE_LEASE_SECONDS": str(settings.lease_seconds),
            "SWEEPSERVE_HEARTBEAT_SECONDS": str(settings.heartbeat_seconds),
            "SWEEPSERVE_POLL_SECONDS": str(settings.poll_seconds),
        }
        | (
            {"SWEEPSERVE_WORKER_MEMORY_LIMIT_MB": str(settings.worker_memory_limit_mb)}
            if settings.worker_memory_limit_mb
            else {}
        )
    )


def start_process(settings: Settings, log_file: Path, *argv: str) -> subprocess.Popen[bytes]:
    """`python <argv>` in the repository with the settings' environment, output to `log_file`."""
    with log_file.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, *argv], cwd=REPO, env=worker_env(settings), stdout=log, stderr=subprocess.STDOUT
        )


def start_worker(settings: Settings, log_file: Path, *args: str) -> subprocess.Popen[bytes]:
    return start_process(settings, log_file, "-m", "app.cli", "worker", *args)


def wait_for(
    condition: Callable[[], bool],
    proc: subprocess.Popen[bytes] | None = None,
    log_file: Path | None = None,
    timeout: float = TRAIN_TIMEOUT_S,
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            log = log_file.read_text() if log_file else ""
            pytest.fail(f"process exited with {proc.returncode} before the condition held:\n{log[-4000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s")
        time.sleep(0.1)


def finish(proc: subprocess.Popen[bytes], log_file: Path) -> str:
    """Wait for a process this test started to exit 0 (kill it by pid on timeout); returns its log."""
    try:
        proc.wait(timeout=TRAIN_TIMEOUT_S)
    finally:
        stop_process(proc, kill=True)
    log = log_file.read_text()
    assert proc.returncode == 0, log[-4000:]
    return log


def stop_process(proc: subprocess.Popen[bytes], kill: bool = False, timeout: float = 30.0) -> None:
    """SIGTERM (or SIGKILL) a process this test started, by its pid, and reap it."""
    if proc.poll() is None:
        if kill:
            proc.kill()
        else:
            proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def worker_thread(
    settings: Settings, max_trials: int | None = 1, stop: threading.Event | None = None
) -> tuple[threading.Thread, list[BaseException]]:
    """run_worker(settings, max_trials, stop) in a thread of this process; errors are collected."""
    errors: list[BaseException] = []

    def work() -> None:
        try:
            run_worker(settings, max_trials=max_trials, stop=stop)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=work)
    thread.start()
    return thread, errors


def trial_row(factory: sessionmaker[Session], trial_id: int) -> Trial:
    with factory() as session:
        trial = session.get(Trial, trial_id)
        assert trial is not None
        return trial


def epoch_rows(factory: sessionmaker[Session], trial_id: int) -> list[EpochMetric]:
    with factory() as session:
        query = select(EpochMetric).where(EpochMetric.trial_id == trial_id).order_by(EpochMetric.epoch)
        return list(session.scalars(query))


def worker_rows(factory: sessionmaker[Session]) -> list[Worker]:
    with factory() as session:
        return list(session.scalars(select(Worker)))
