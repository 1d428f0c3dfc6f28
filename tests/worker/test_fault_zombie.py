"""A zombie worker, on SQLite and PostgreSQL: paused (SIGSTOP) until its lease expired and a new
attempt finished the trial, then resumed (SIGCONT). Its write-backs are refused, and its files are
harmless: it writes only in its own attempt's folder, which it deletes once it sees its loss."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from app.settings import Settings
from app.store.artifacts import trial_dir
from app.store.db import is_sqlite, transaction
from app.store.jobs import submit_job
from app.store.tables import RegisteredModel
from tests.workers import (
    SMALLER_DATA,
    TRAIN_TIMEOUT_S,
    epoch_rows,
    start_worker,
    stop_process,
    tiny_spec,
    trial_row,
    wait_for,
    worker_thread,
)


def _nobody_holds_a_lock(engine: Engine, trial_id: int) -> bool:
    """True when no transaction holds the trial's row (PostgreSQL) or the write lock (SQLite)."""
    if is_sqlite(engine):
        probe = sqlite3.connect(str(engine.url.database), timeout=0.1, isolation_level=None)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.execute("ROLLBACK")
            return True
        except sqlite3.OperationalError:
            return False
        finally:
            probe.close()
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT id FROM trials WHERE id = :id FOR UPDATE NOWAIT"), {"id": trial_id})
        return True
    except OperationalError:
        return False


def _pause(proc: subprocess.Popen[bytes], engine: Engine, trial_id: int) -> None:
    """SIGSTOP the worker between two transactions: one frozen inside a transaction would keep its
    locks, which on SQLite stops every other writer (there is no way around that but to wait)."""
    for _ in range(100):
        os.kill(proc.pid, signal.SIGSTOP)
        if _nobody_holds_a_lock(engine, trial_id):
            return
        os.kill(proc.pid, signal.SIGCONT)
        time.sleep(0.05)
    pytest.fail("the worker was inside a transaction every time it was paused")


@pytest.mark.slow
def test_a_paused_worker_cannot_write_after_a_new_attempt_took_over(
    engine: Engine,
    factory: sessionmaker[Session],
    worker_settings: Callable[..., Settings],
    data_dir: Path,
    tmp_path: Path,
    one_thread: None,
) -> None:
    with transaction(factory) as session:
        job, _ = submit_job(session, tiny_spec(epochs=3, data=SMALLER_DATA))
        job_id, trial_id = job.id, job.trials[0].id
    settings = worker_settings(data_dir=data_dir, lease_seconds=3.0, heartbeat_seconds=0.5)
    folder = trial_dir(settings.artifacts_dir, job_id, trial_id)
    zombie_log = tmp_path / "zombie.log"
    zombie = start_worker(settings, zombie_log)
    try:
        wait_for(lambda: len(epoch_rows(factory, trial_id)) >= 1, zombie, zombie_log)
        _pause(zombie, engine, trial_id)
        # Its lease runs out; a second worker claims attempt 2, resumes after epoch 1 and finishes.
        rescuer, errors = worker_thread(settings, max_trials=1)
        rescuer.join(timeout=TRAIN_TIMEOUT_S)
        assert not rescuer.is_alive() and errors == []
        rows_before = [(r.epoch, r.attempt, r.val_accuracy) for r in epoch_rows(factory, trial_id)]
        trial_before = trial_row(factory, trial_id)
        kept = {p.relative_to(folder).as_posix(): p.stat().st_mtime_ns for p in folder.rglob("*.pt")}

        os.kill(zombie.pid, signal.SIGCONT)
        wait_for(lambda: "attempt 1 superseded" in zombie_log.read_text(), zombie, zombie_log)
    finally:
        if zombie.poll() is None:
            os.kill(zombie.pid, signal.SIGCONT)  # a stopped process cannot act on SIGTERM
        stop_process(zombie)
    assert zombie.returncode == 0, zombie_log.read_text()[-4000:]

    assert (trial_before.status, trial_before.attempts) == ("succeeded", 2), trial_before.error
    assert rows_before[0][:2] == (1, 1) and [r[:2] for r in rows_before[1:]] == [(2, 2), (3, 2)]
    after = trial_row(factory, trial_id)
    assert (after.status, after.attempts, after.worker_id, after.finished_at) == (
        "succeeded",
        2,
        trial_before.worker_id,
        trial_before.finished_at,
    )
    assert [(r.epoch, r.attempt, r.val_accuracy) for r in epoch_rows(factory, trial_id)] == rows_before
    with factory() as session:
        [model_path] = session.scalars(
            select(RegisteredModel.path).where(RegisteredModel.trial_id == trial_id)
        )
    assert model_path == f"jobs/{job_id}/trials/{trial_id}/attempt-2/best.pt"
    # Attempt 2's files are untouched; whatever the zombie wrote in attempt-1/ is gone.
    assert sorted(kept) == ["attempt-2/best.pt", "attempt-2/last.pt"]
    assert {p.relative_to(folder).as_posix(): p.stat().st_mtime_ns for p in folder.rglob("*.pt")} == kept
    assert "without writing back" in zombie_log.read_text()
