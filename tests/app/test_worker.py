"""The worker loop on SQLite and PostgreSQL: real training on tiny synthetic data, real worker
processes, and the faults a worker must survive (kill -9, SIGTERM, lost leases, bad data)."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from sqlalchemy import Engine, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from app.artifacts import attempt_dir, trial_dir
from app.db import transaction
from app.models import EpochMetric, Job, RegisteredModel, Trial, Worker
from app.queue import Claim, cancel_job, claim_trial, submit_job
from app.settings import Settings
from app.worker import LeaseKeeper, describe_error, retry_db, run_worker
from ml.config import JobSpec
from ml.data import load_dataset, make_splits
from ml.train import EpochMetrics, TrialHooks, TrialResult, run_trial
from tests.synthetic import write_image_folder

REPO = Path(__file__).resolve().parents[2]
# The ML engine's fast test recipe (tests/ml/conftest.py): separates the synthetic classes in 2 epochs.
TINY_TRAIN: dict[str, Any] = {
    "arch": "resnet18_imagenet",
    "batch_size": 16,
    "optimizer": "adamw",
    "lr": 1e-3,
    "weight_decay": 0.05,
    "ema_decay": 0.9,
    "deterministic": True,
}
TINY_DATA = {"val_size": 60}  # of 300 synthetic train images; 50 test images
TRAIN_TIMEOUT_S = 240.0

Submit = Callable[..., tuple[int, list[int]]]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    write_image_folder(root, n_train_per_class=30, n_test_per_class=5)
    return root


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Everyone shares two cores; a worker process gets OMP_NUM_THREADS=1 for the same reason."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def submit_job_of(factory: sessionmaker[Session]) -> Submit:
    """submit_job_of(epochs, seeds=(0,), max_attempts=3) -> (job id, trial ids)."""

    def _submit(epochs: int, seeds: tuple[int, ...] = (0,), max_attempts: int = 3) -> tuple[int, list[int]]:
        spec = _spec(epochs, seeds, max_attempts)
        with transaction(factory) as session:
            job, _ = submit_job(session, spec)
            return job.id, [trial.id for trial in job.trials]

    return _submit


def _spec(epochs: int, seeds: tuple[int, ...] = (0,), max_attempts: int = 3) -> JobSpec:
    return JobSpec.model_validate(
        {
            "search": {"space": {"seed": list(seeds)}},
            "train": {**TINY_TRAIN, "epochs": epochs},
            "data": TINY_DATA,
            "max_attempts": max_attempts,
        }
    )


def _start_worker(settings: Settings, log_file: Path, *args: str) -> subprocess.Popen[bytes]:
    env = os.environ | {
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "SWEEPSERVE_DATABASE_URL": settings.database_url,
        "SWEEPSERVE_ARTIFACTS_DIR": str(settings.artifacts_dir),
        "SWEEPSERVE_DATA_DIR": str(settings.data_dir),
        "SWEEPSERVE_ALLOW_DOWNLOAD": "false",
        "SWEEPSERVE_LEASE_SECONDS": str(settings.lease_seconds),
        "SWEEPSERVE_HEARTBEAT_SECONDS": str(settings.heartbeat_seconds),
        "SWEEPSERVE_POLL_SECONDS": str(settings.poll_seconds),
    }
    with log_file.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "app.worker", *args],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _wait_for(
    condition: Callable[[], bool], proc: subprocess.Popen[bytes] | None, log_file: Path | None
) -> None:
    deadline = time.monotonic() + TRAIN_TIMEOUT_S
    while not condition():
        if proc is not None and proc.poll() is not None:
            log = log_file.read_text() if log_file else ""
            pytest.fail(f"worker exited with {proc.returncode} before the condition held:\n{log[-4000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {TRAIN_TIMEOUT_S} s")
        time.sleep(0.1)


def _finish(proc: subprocess.Popen[bytes], log_file: Path) -> str:
    try:
        proc.wait(timeout=TRAIN_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()  # only the worker this test started, by its pid
            proc.wait()
    log = log_file.read_text()
    assert proc.returncode == 0, log[-4000:]
    return log


def _trial(factory: sessionmaker[Session], trial_id: int) -> Trial:
    with factory() as session:
        trial = session.get(Trial, trial_id)
        assert trial is not None
        return trial


def _epochs(factory: sessionmaker[Session], trial_id: int) -> list[EpochMetric]:
    with factory() as session:
        query = select(EpochMetric).where(EpochMetric.trial_id == trial_id).order_by(EpochMetric.epoch)
        return list(session.scalars(query))


def _workers(factory: sessionmaker[Session]) -> list[Worker]:
    with factory() as session:
        return list(session.scalars(select(Worker)))


# --- no training needed ---------------------------------------------------------------------------


def test_a_raising_trial_is_requeued_then_failed_and_the_worker_goes_on(
    factory: sessionmaker[Session], submit_job_of: Submit, worker_settings: Callable[..., Settings]
) -> None:
    job_id, [trial_id] = submit_job_of(2, max_attempts=2)
    settings = worker_settings()  # its data_dir holds no data set: loading raises DataError
    run_worker(settings, max_trials=2)
    trial = _trial(factory, trial_id)
    assert (trial.status, trial.attempts, trial.worker_id is not None) == ("failed", 2, True)
    assert trial.error is not None and trial.error.startswith("DataError: ")
    assert str(settings.data_dir) in trial.error
    with factory() as session:
        job = session.get(Job, job_id)
        assert job is not None and (job.status, job.finished_at is not None) == ("failed", True)
    assert _workers(factory) == []  # a clean exit removes the worker's row


def test_an_idle_worker_polls_until_stopped(
    factory: sessionmaker[Session], worker_settings: Callable[..., Settings]
) -> None:
    stop = threading.Event()
    registered: list[Worker] = []

    def stop_once_registered() -> None:
        deadline = time.monotonic() + 60
        while not registered and time.monotonic() < deadline:
            registered.extend(_workers(factory))
            time.sleep(0.05)
        time.sleep(0.5)  # a few idle polls (poll_seconds is 0.1)
        stop.set()

    watcher = threading.Thread(target=stop_once_registered)
    watcher.start()
    run_worker(worker_settings(), stop=stop)
    watcher.join()
    assert len(registered) == 1 and registered[0].heartbeat_at is not None  # its row while it ran
    assert _workers(factory) == []  # removed on the way out


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
    assert (_trial(factory, trial_id).lease_expires_at or 0) > time.time() + 20  # renewed by 30 s
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
    log = _finish(_start_worker(settings, log_file, "--max-trials", "2"), log_file)
    with factory() as session:
        job = session.get(Job, job_id)
        trials = [session.get(Trial, trial_id) for trial_id in trial_ids]
        models = {m.trial_id: m for m in session.scalars(select(RegisteredModel))}
    assert job is not None and job.status == "succeeded" and job.finished_at is not None
    for trial in trials:
        assert trial is not None and trial.status == "succeeded", trial and trial.error
        assert trial.val_accuracy is not None and trial.val_accuracy >= 0.5  # chance is 0.1
        assert trial.test_accuracy is not None and trial.test_accuracy >= 0.5
        assert (trial.attempts, trial.epoch, trial.best_epoch) == (1, 1, 1)
        assert [m.epoch for m in _epochs(factory, trial.id)] == [1]
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
    assert _workers(factory) == []


@pytest.fixture(scope="module")
def uninterrupted(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> TrialResult:
    """The 3-epoch trial of the kill -9 test, trained in one go in this process."""
    spec = _spec(epochs=3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        splits = make_splits(load_dataset("cifar10", data_dir, False), spec.data, seed=spec.train.seed)
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
    first = _start_worker(settings, first_log)
    try:
        _wait_for(lambda: len(_epochs(factory, trial_id)) >= 1, first, first_log)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == -signal.SIGKILL
    assert _trial(factory, trial_id).status == "running"  # nobody wrote it off

    _finish(_start_worker(settings, second_log, "--max-trials", "1"), second_log)
    trial = _trial(factory, trial_id)
    assert (trial.status, trial.attempts, trial.epoch) == ("succeeded", 2, 3), trial.error
    rows = _epochs(factory, trial_id)
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
    spec = _spec(epochs=2)
    splits = make_splits(load_dataset("cifar10", data_dir, False), spec.data, seed=spec.train.seed)
    with pytest.raises(_Died):
        out_dir = attempt_dir(trial_dir(settings.artifacts_dir, job_id, trial_id), claim.attempt)
        run_trial(spec.train, splits, out_dir, _DiesAfterCheckpoint(), allow_download=False)
    assert _epochs(factory, trial_id) == []
    expire_lease(trial_id)

    run_worker(settings, max_trials=1)
    trial = _trial(factory, trial_id)
    assert (trial.status, trial.attempts, trial.epoch) == ("succeeded", 2, 2), trial.error
    assert [(row.epoch, row.attempt) for row in _epochs(factory, trial_id)] == [(1, 2), (2, 2)]


@pytest.mark.slow
def test_cancel_stops_a_running_trial_at_the_next_epoch_boundary(
    factory: sessionmaker[Session],
    submit_job_of: Submit,
    worker_settings: Callable[..., Settings],
    data_dir: Path,
    one_thread: None,
) -> None:
    job_id, [trial_id] = submit_job_of(2)
    thread, errors = _worker_thread(worker_settings(data_dir=data_dir))
    try:
        _wait_for(lambda: _trial(factory, trial_id).status == "running" or not thread.is_alive(), None, None)
        with transaction(factory) as session:
            running = session.get(Trial, trial_id, with_for_update=True)  # no epoch lands in between
            assert running is not None and running.status == "running"
            epochs_done = running.epoch
            cancel_job(session, job_id)
    finally:
        thread.join(timeout=TRAIN_TIMEOUT_S)
    assert not thread.is_alive() and errors == []
    trial = _trial(factory, trial_id)
    assert (trial.status, trial.epoch, trial.test_accuracy) == ("cancelled", epochs_done + 1, None)
    assert len(_epochs(factory, trial_id)) == epochs_done + 1
    with factory() as session:
        job = session.get(Job, job_id)
        assert job is not None and (job.status, job.finished_at is not None) == ("cancelled", True)
        assert list(session.scalars(select(RegisteredModel))) == []


@pytest.mark.slow
def test_a_worker_that_lost_its_lease_stops_and_writes_nothing(
    factory: sessionmaker[Session],
    submit_job_of: Submit,
    worker_settings: Callable[..., Settings],
    expire_lease: Callable[[int], None],
    data_dir: Path,
    one_thread: None,
) -> None:
    job_id, [trial_id] = submit_job_of(3)
    settings = worker_settings(data_dir=data_dir, heartbeat_seconds=0.2)
    thread, errors = _worker_thread(settings)
    try:
        _wait_for(lambda: _trial(factory, trial_id).status == "running" or not thread.is_alive(), None, None)
        # The worker looks dead to the queue (e.g. it was paused): its lease runs out and it is reclaimed.
        expire_lease(trial_id)
        with transaction(factory) as session:
            thief = claim_trial(session, "thief", 60.0)
        rows_when_stolen = [(row.epoch, row.attempt) for row in _epochs(factory, trial_id)]
    finally:
        thread.join(timeout=TRAIN_TIMEOUT_S)
    assert not thread.is_alive() and errors == []
    assert thief is not None and thief.attempt == 2
    trial = _trial(factory, trial_id)
    assert (trial.status, trial.worker_id, trial.attempts, trial.error) == ("running", "thief", 2, None)
    assert [(row.epoch, row.attempt) for row in _epochs(factory, trial_id)] == rows_when_stolen
    # Stolen before its first epoch could end: the lease keeper, not a refused epoch write, stopped it.
    assert not list(trial_dir(settings.artifacts_dir, job_id, trial_id).rglob("last.pt"))


def _worker_thread(settings: Settings) -> tuple[threading.Thread, list[BaseException]]:
    """run_worker(settings, max_trials=1) in a thread of this process; errors are collected."""
    errors: list[BaseException] = []

    def work() -> None:
        try:
            run_worker(settings, max_trials=1)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=work)
    thread.start()
    return thread, errors


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # signal handling; the database plays no part
def test_sigterm_stops_the_worker_without_writing_the_trial_off(
    factory: sessionmaker[Session],
    submit_job_of: Submit,
    worker_settings: Callable[..., Settings],
    data_dir: Path,
    tmp_path: Path,
) -> None:
    _, [trial_id] = submit_job_of(3)
    settings = worker_settings(data_dir=data_dir)
    log_file = tmp_path / "worker.log"
    proc = _start_worker(settings, log_file)
    try:
        _wait_for(lambda: _trial(factory, trial_id).status == "running", proc, log_file)
        proc.send_signal(signal.SIGTERM)
    finally:
        _finish(proc, log_file)
    trial = _trial(factory, trial_id)
    assert (trial.status, trial.attempts, trial.error) == (
        "running",
        1,
        None,
    )  # resumable once the lease ends
    assert trial.epoch < 3
    assert _workers(factory) == []
