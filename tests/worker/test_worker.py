"""The worker loop on SQLite and PostgreSQL: real training on tiny synthetic data, real worker
processes, and the faults a worker must survive (kill -9, SIGTERM, lost leases, bad data)."""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from sqlalchemy import Engine, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from app.settings import Settings
from app.store.artifacts import attempt_dir, trial_dir
from app.store.claims import Claim, claim_trial
from app.store.db import transaction
from app.store.jobs import cancel_job, submit_job
from app.store.tables import Job, RegisteredModel, Trial, Worker
from app.worker.lease import LeaseKeeper
from app.worker.loop import run_worker
from app.worker.retry import describe_error, retry_db
from ml.checkpoint import load_checkpoint
from ml.data import load_dataset, make_splits
from ml.train import EpochMetrics, TrialHooks, TrialResult, run_trial
from tests.postgres import ONE_DATABASE
from tests.workers import (
    TRAIN_TIMEOUT_S,
    epoch_rows,
    finish,
    start_worker,
    tiny_spec,
    trial_row,
    wait_for,
    worker_rows,
    worker_thread,
)

Submit = Callable[..., tuple[int, list[int]]]


@pytest.fixture
def submit_job_of(factory: sessionmaker[Session]) -> Submit:
    """submit_job_of(epochs, seeds=(0,), max_attempts=3) -> (job id, trial ids)."""

    def _submit(epochs: int, seeds: tuple[int, ...] = (0,), max_attempts: int = 3) -> tuple[int, list[int]]:
        spec = tiny_spec(epochs, seeds, max_attempts)
        with transaction(factory) as session:
            job, _ = submit_job(session, spec)
            return job.id, [trial.id for trial in job.trials]

    return _submit


# --- no training needed ---------------------------------------------------------------------------


def test_a_raising_trial_is_requeued_then_failed_and_the_worker_goes_on(
    factory: sessionmaker[Session], submit_job_of: Submit, worker_settings: Callable[..., Settings]
) -> None:
    job_id, [trial_id] = submit_job_of(2, max_attempts=2)
    settings = worker_settings()  # its data_dir holds no data set: loading raises DataError
    run_worker(settings, max_trials=2)
    trial = trial_row(factory, trial_id)
    assert (trial.status, trial.attempts, trial.worker_id is not None) == ("failed", 2, True)
    assert trial.error is not None and trial.error.startswith("DataError: ")
    assert str(settings.data_dir) in trial.error
    with factory() as session:
        job = session.get(Job, job_id)
        assert job is not None and (job.status, job.finished_at is not None) == ("failed", True)
    assert worker_rows(factory) == []  # a clean exit removes the worker's row


def test_an_idle_worker_polls_until_stopped(
    factory: sessionmaker[Session], worker_settings: Callable[..., Settings]
) -> None:
    stop = threading.Event()
    registered: list[Worker] = []

    def stop_once_registered() -> None:
        deadline = time.monotonic() + 60
        while not registered and time.monotonic() < deadline:
            registered.extend(worker_rows(factory))
            time.sleep(0.05)
        time.sleep(0.5)  # a few idle polls (poll_seconds is 0.1)
        stop.set()

    watcher = threading.Thread(target=stop_once_registered)
    watcher.start()
    run_worker(worker_settings(), stop=stop)
    watcher.join()
    assert len(registered) == 1 and registered[0].heartbeat_at is not None  # its row while it ran
    assert worker_rows(factory) == []  # removed on the way out


def test_lease_keeper_renews_and_then_reports_a_lost_lease(
    engine: Engine, factory: sessionmaker[Session], submit_job_of: Submit, expire_lease: Callable[[int], None]
) -> None:
    _, [trial_id] = submit_job_of(1)
    with transaction(factory) as session:
        claim = claim_trial(session, "keeper-test", 30.0)
    assert claim is not None
    keeper = LeaseKeeper(engine, "keeper-test", interval=60.0)
    lost = keeper.watch(claim).lost
    expire_lease(trial_id)
    keeper.beat()
    assert not lost.is_set()
    assert (trial_row(factory, trial_id).lease_expires_at or 0) > time.time() + 20  # renewed by 30 s
    expire_lease(trial_id)
    with transaction(factory) as session:
        assert claim_trial(session, "other-worker", 30.0) is not None
    keeper.beat()
    assert lost.is_set()


def test_retry_db_backs_off_until_the_database_answers() -> None:
    calls: list[float] = []

    def flaky() -> str:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))
        return "answered"

    assert retry_db(flaky, "test", threading.Event()) == "answered"
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert gaps[0] >= 0.45 and gaps[1] >= 0.9  # 0.5 s, then doubled


def test_retry_db_gives_up_once_the_worker_is_stopping() -> None:
    calls: list[int] = []

    def down() -> None:
        calls.append(1)
        raise OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))

    stop = threading.Event()
    stop.set()
    with pytest.raises(OperationalError):
        retry_db(down, "test", stop)
    assert calls == [1]


def test_describe_error_names_type_message_and_place() -> None:
    try:
        raise FloatingPointError("loss became NaN at epoch 2 batch 3")
    except FloatingPointError as exc:
        text = describe_error(exc)
    assert text.startswith("FloatingPointError: loss became NaN at epoch 2 batch 3 (at ")
    assert "test_worker.py" in text


# --- real training ---------------------------------------------------------------------------------


@ONE_DATABASE
@pytest.mark.slow
def test_worker_process_trains_a_two_trial_job(
    factory: sessionmaker[Session],
    submit_job_of: Submit,
    worker_settings: Callable[..., Settings],
    data_dir: Path,
    tmp_path: Path,
) -> None:
    job_id, trial_ids = submit_job_of(1, seeds=(0, 1))
    settings = worker_settings(data_dir=data_dir)
    log_file = tmp_path / "worker.log"
    log = finish(start_worker(settings, log_file, "--max-trials", "2"), log_file)
    with factory() as session:
        job = session.get(Job, job_id)
        trials = [session.get(Trial, trial_id) for trial_id in trial_ids]
        models = {m.trial_id: m for m in session.scalars(select(RegisteredModel))}
    assert job is not None and job.status == "succeeded" and job.finished_at is not None
    for trial in trials:
        assert trial is not None and trial.status == "succeeded", trial and trial.error
        assert trial.val_accuracy is not None and trial.val_accuracy >= 0.5  # chance is 0.1
        assert trial.test_accuracy is not None and trial.test_accuracy >= 0.5
        assert (trial.attempts, trial.epochs_done, trial.best_epoch) == (1, 1, 1)
        assert [m.epoch for m in epoch_rows(factory, trial.id)] == [1]
        model = models[trial.id]
        assert (model.epoch, model.val_accuracy, model.arch) == (
            trial.best_epoch,
            trial.val_accuracy,
            "resnet18_imagenet",
        )
        assert model.path == f"jobs/{job_id}/trials/{trial.id}/attempt-1/best.pt"
        assert (settings.artifacts_dir / model.path).is_file()
        assert (settings.artifacts_dir / model.path).with_name("last.pt").is_file()
        assert f"job_id={job_id} trial_id={trial.id}" in log  # log lines carry the ids
    # The trials differ only in train.seed: they were selected on the same validation images.
    fingerprints = {
        load_checkpoint(settings.artifacts_dir / models[t].path)["metadata"]["val_fingerprint"]
        for t in trial_ids
    }
    assert len(fingerprints) == 1 and len(fingerprints.pop()) == 64
    assert worker_rows(factory) == []


@pytest.fixture(scope="module")
def uninterrupted(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> TrialResult:
    """The 3-epoch trial of the kill -9 test, trained in one go in this process."""
    spec = tiny_spec(epochs=3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        splits = make_splits(load_dataset("cifar10", data_dir, False), spec.data)
        return run_trial(spec.train, splits, tmp_path_factory.mktemp("uninterrupted"), allow_download=False)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_kill_9_mid_trial_then_another_worker_resumes_it_exactly(
    factory: sessionmaker[Session],
    submit_job_of: Submit,
    worker_settings: Callable[..., Settings],
    data_dir: Path,
    tmp_path: Path,
    uninterrupted: TrialResult,
) -> None:
    _, [trial_id] = submit_job_of(3)
    settings = worker_settings(data_dir=data_dir, lease_seconds=2.0, heartbeat_seconds=0.5)
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    first = start_worker(settings, first_log)
    try:
        wait_for(lambda: len(epoch_rows(factory, trial_id)) >= 1, first, first_log)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == -signal.SIGKILL
    assert trial_row(factory, trial_id).status == "running"  # nobody wrote it off

    finish(start_worker(settings, second_log, "--max-trials", "1"), second_log)
    trial = trial_row(factory, trial_id)
    assert (trial.status, trial.attempts, trial.epochs_done) == ("succeeded", 2, 3), trial.error
    rows = epoch_rows(factory, trial_id)
    assert [row.epoch for row in rows] == [1, 2, 3]
    assert (rows[0].attempt, rows[-1].attempt) == (1, 2)
    for row, reference in zip(rows, uninterrupted.history, strict=True):
        assert row.train_loss == pytest.approx(reference.train_loss, rel=1e-3, abs=1e-4)
        assert row.val_loss == pytest.approx(reference.val_loss, rel=1e-3, abs=1e-4)
        assert row.val_accuracy == pytest.approx(reference.val_accuracy, abs=1e-6)
    assert trial.test_accuracy == pytest.approx(uninterrupted.test_accuracy, abs=1e-6)
    assert trial.best_epoch == uninterrupted.best_epoch
    # Attempt 2 started from attempt 1's checkpoints in a folder of its own; retention then
    # deleted attempt 1's, leaving one best.pt and one last.pt.
    folder = trial_dir(settings.artifacts_dir, trial.job_id, trial_id)
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) == [
        "attempt-2",
        "attempt-2/best.pt",
        "attempt-2/last.pt",
    ]


class _DiesAfterCheckpoint(TrialHooks):
    """Dies right after the trainer wrote last.pt, before anything reached the database."""

    def epoch_end(self, metrics: EpochMetrics, history: list[EpochMetrics]) -> Any:
        raise _Died(f"died after epoch {metrics.epoch}")


class _Died(Exception):
    pass


@ONE_DATABASE
@pytest.mark.slow
def test_an_epoch_checkpointed_but_not_recorded_is_recorded_on_resume(
    factory: sessionmaker[Session],
    submit_job_of: Submit,
    worker_settings: Callable[..., Settings],
    expire_lease: Callable[[int], None],
    data_dir: Path,
    one_thread: None,
) -> None:
    job_id, [trial_id] = submit_job_of(2)
    settings = worker_settings(data_dir=data_dir)
    with transaction(factory) as session:
        claim: Claim | None = claim_trial(session, "doomed", 30.0)
    assert claim is not None
    spec = tiny_spec(epochs=2)
    splits = make_splits(load_dataset("cifar10", data_dir, False), spec.data)
    with pytest.raises(_Died):
        out_dir = attempt_dir(trial_dir(settings.artifacts_dir, job_id, trial_id), claim.attempt)
        run_trial(spec.train, splits, out_dir, _DiesAfterCheckpoint(), allow_download=False)
    assert epoch_rows(factory, trial_id) == []
    expire_lease(trial_id)

    run_worker(settings, max_trials=1)
    trial = trial_row(factory, trial_id)
    assert (trial.status, trial.attempts, trial.epochs_done) == ("succeeded", 2, 2), trial.error
    assert [(row.epoch, row.attempt) for row in epoch_rows(factory, trial_id)] == [(1, 2), (2, 2)]


@pytest.mark.slow
def test_cancel_stops_a_running_trial_at_the_next_epoch_boundary(
    factory: sessionmaker[Session],
    submit_job_of: Submit,
    worker_settings: Callable[..., Settings],
    data_dir: Path,
    one_thread: None,
) -> None:
    job_id, [trial_id] = submit_job_of(2)
    # Renewals far apart, so the epoch's own write sees the cancel first (tests/worker/test_cancellation.py
    # has the mid-epoch stop through the lease renewal).
    settings = worker_settings(data_dir=data_dir, lease_seconds=60.0, heartbeat_seconds=30.0)
    thread, errors = worker_thread(settings)
    try:
        wait_for(lambda: trial_row(factory, trial_id).status == "running" or not thread.is_alive())
        with transaction(factory) as session:
            running = session.get(Trial, trial_id, with_for_update=True)  # no epoch lands in between
            assert running is not None and running.status == "running"
            epochs_done = running.epochs_done
            cancel_job(session, job_id)
    finally:
        thread.join(timeout=TRAIN_TIMEOUT_S)
    assert not thread.is_alive() and errors == []
    trial = trial_row(factory, trial_id)
    assert (trial.status, trial.epochs_done, trial.test_accuracy) == ("cancelled", epochs_done + 1, None)
    assert len(epoch_rows(factory, trial_id)) == epochs_done + 1
    with factory() as session:
        job = session.get(Job, job_id)
        assert job is not None and (job.status, job.finished_at is not None) == ("cancelled", True)
        assert list(session.scalars(select(RegisteredModel))) == []


@pytest.mark.slow
def test_a_worker_that_lost_its_lease_stops_and_writes_nothing(
    factory: sessionmaker[Session],
    submit_job_of: Submit,
    worker_settings: Callable[..., Settings],
    data_dir: Path,
    one_thread: None,
) -> None:
    job_id, [trial_id] = submit_job_of(3)
    settings = worker_settings(data_dir=data_dir, heartbeat_seconds=0.2)
    thread, errors = worker_thread(settings)
    try:
        wait_for(lambda: trial_row(factory, trial_id).status == "running" or not thread.is_alive())
        # The worker looks dead to the queue (e.g. it was paused): its lease runs out and it is reclaimed,
        # in one transaction, so the worker's 0.2 s heartbeat cannot renew the lease in between.
        with transaction(factory) as session:
            session.execute(update(Trial).where(Trial.id == trial_id).values(lease_expires_at=0.0))
            thief = claim_trial(session, "thief", 60.0)
        rows_when_stolen = [(row.epoch, row.attempt) for row in epoch_rows(factory, trial_id)]
    finally:
        thread.join(timeout=TRAIN_TIMEOUT_S)
    assert not thread.is_alive() and errors == []
    assert thief is not None and thief.attempt == 2
    trial = trial_row(factory, trial_id)
    assert (trial.status, trial.worker_id, trial.attempts, trial.error) == ("running", "thief", 2, None)
    assert [(row.epoch, row.attempt) for row in epoch_rows(factory, trial_id)] == rows_when_stolen
    # Stolen before its first epoch could end: the lease keeper, not a refused epoch write, stopped it.
    assert not list(trial_dir(settings.artifacts_dir, job_id, trial_id).rglob("last.pt"))


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # signal handling; the database plays no part
def test_sigterm_gives_the_trial_back_without_writing_it_off(
    factory: sessionmaker[Session],
    submit_job_of: Submit,
    worker_settings: Callable[..., Settings],
    data_dir: Path,
    tmp_path: Path,
) -> None:
    _, [trial_id] = submit_job_of(3)
    settings = worker_settings(data_dir=data_dir)
    log_file = tmp_path / "worker.log"
    proc = start_worker(settings, log_file)
    try:
        wait_for(lambda: trial_row(factory, trial_id).status == "running", proc, log_file)
        proc.send_signal(signal.SIGTERM)
    finally:
        finish(proc, log_file)
    trial = trial_row(factory, trial_id)
    # Given back at once (preempted, not failed): claimable now, not once the lease ends.
    assert (trial.status, trial.attempts, trial.preemptions, trial.error) == ("queued", 1, 1, None)
    assert (trial.worker_id, trial.lease_expires_at) == (None, None)
    assert trial.epochs_done < 3
    assert worker_rows(factory) == []
