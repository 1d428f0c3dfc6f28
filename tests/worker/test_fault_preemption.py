"""Preemption is not failure: real worker processes sent SIGTERM by pid mid-trial give the trial
back at once (another worker re-claims it within seconds, not after the lease), and a trial
preempted more often than its max_attempts still succeeds; with its database gone, a worker told
to stop exits anyway."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from app.settings import Settings
from app.store.db import make_engine, session_factory, transaction, upgrade_to_head
from app.store.jobs import submit_job
from tests.postgres import ONE_DATABASE, fresh_postgres_database
from tests.workers import (
    SMALLER_DATA,
    epoch_rows,
    finish,
    start_worker,
    stop_process,
    tiny_spec,
    trial_row,
    wait_for,
    worker_rows,
)

pytestmark = pytest.mark.slow

RECLAIM_WITHIN_S = 10.0


def _holder(factory: sessionmaker[Session], trial_id: int, workers: list[subprocess.Popen[bytes]]) -> int:
    """Index in `workers` of the process holding the trial (worker ids are host:pid:suffix)."""
    worker_id = trial_row(factory, trial_id).worker_id
    assert worker_id is not None
    pid = int(worker_id.split(":")[1])
    return next(i for i, w in enumerate(workers) if w.pid == pid)


@ONE_DATABASE
def test_three_sigterms_during_one_trial_are_preemptions_not_failures(
    factory: sessionmaker[Session], worker_settings: Callable[..., Settings], data_dir: Path, tmp_path: Path
) -> None:
    # A long lease: a re-claim within seconds can only come from the trial being given back.
    settings = worker_settings(
        data_dir=data_dir, lease_seconds=120.0, heartbeat_seconds=1.0, poll_seconds=0.2
    )
    logs = [tmp_path / f"worker-{i}.log" for i in range(4)]
    workers = [start_worker(settings, log, "--max-trials", "1") for log in logs]
    try:
        wait_for(lambda: len(worker_rows(factory)) == 4, timeout=120)  # all polling before the job exists
        with transaction(factory) as session:
            job, _ = submit_job(session, tiny_spec(4, max_attempts=2, data=SMALLER_DATA))
            trial_id = job.trials[0].id
        reclaims = []
        for signal_number in (1, 2, 3):
            # The first signal lands in epoch 1, the others after epochs 1 and 2 were recorded.
            wait_for(
                lambda n=signal_number: (
                    trial_row(factory, trial_id).attempts == n
                    and trial_row(factory, trial_id).status == "running"
                    and len(epoch_rows(factory, trial_id)) >= n - 1
                )
            )
            held = workers[_holder(factory, trial_id, workers)]
            sent = time.monotonic()
            os.kill(held.pid, signal.SIGTERM)
            wait_for(lambda n=signal_number: trial_row(factory, trial_id).attempts == n + 1, timeout=60)
            reclaims.append(time.monotonic() - sent)
            held.wait(timeout=60)
            log = logs[workers.index(held)].read_text()
            assert held.returncode == 0, log[-3000:]
            assert "trial given back (queued)" in log, log[-3000:]
        last = workers[_holder(factory, trial_id, workers)]
        finish(last, logs[workers.index(last)])
    finally:
        for worker in workers:
            stop_process(worker, kill=True)
    trial = trial_row(factory, trial_id)
    assert (trial.status, trial.preemptions, trial.attempts, trial.max_attempts) == ("succeeded", 3, 4, 2), (
        trial.error
    )
    assert [row.epoch for row in epoch_rows(factory, trial_id)] == [1, 2, 3, 4]  # no gap, no duplicate
    assert all(seconds < RECLAIM_WITHIN_S for seconds in reclaims), reclaims


@ONE_DATABASE  # the worker_settings fixture's own database; this test makes a PostgreSQL one
@pytest.mark.postgres
def test_a_worker_told_to_stop_exits_although_its_database_is_gone(
    worker_settings: Callable[..., Settings], data_dir: Path, tmp_path: Path
) -> None:
    with fresh_postgres_database("sweepserve_gone") as url:
        upgrade_to_head(url)
        engine = make_engine(url)
        try:
            factory = session_factory(engine)
            with transaction(factory) as session:
                job, _ = submit_job(session, tiny_spec(20, data=SMALLER_DATA))
                trial_id = job.trials[0].id
            settings = worker_settings(database_url=url, data_dir=data_dir, lease_seconds=60.0)
            log_file = tmp_path / "worker.log"
            worker = start_worker(settings, log_file)
            try:
                wait_for(lambda: len(epoch_rows(factory, trial_id)) >= 1, worker, log_file)
            finally:
                engine.dispose()
            admin = make_engine(url.rsplit("/", 1)[0] + "/postgres")
            with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text(f'DROP DATABASE "{url.rsplit("/", 1)[1]}" WITH (FORCE)'))
            admin.dispose()
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=60)  # without a bound it trained on, at full CPU, for minutes
            finally:
                stop_process(worker, kill=True)
        finally:
            engine.dispose()
    log = log_file.read_text()
    assert worker.returncode is not None and worker.returncode != -signal.SIGKILL, log[-3000:]
    assert "could not give the trial back" in log, log[-3000:]
