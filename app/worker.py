"""The worker: claim a trial, train it with `ml.train.run_trial`, write the results back; repeat.

A claim is one attempt, held under a lease that a background thread renews. Write-backs go
through app.queue's guarded statements, so an attempt whose lease was taken over (the worker
was paused, or the database was unreachable for too long) gets `LeaseLost`, stops training
and writes nothing more; the attempt that took over resumes from the newest earlier attempt's
last.pt. Each attempt writes its checkpoints in a folder of its own (see app.artifacts), so a
zombie's files are never read.

At each epoch boundary the job's early-stopping rule (ASHA, median) decides whether the trial
goes on; a pruned trial keeps its curve and checkpoints and is tested once on its best.pt.
ASHA may also pause a trial at a rung until the job's other trials reach it (see
ml.early_stopping): the worker puts it back in the queue and claims the next; the claim that
resumes it decides again, at once, before training on.
A cancel is seen at the next epoch boundary, or within POLL_EVERY batches of the next lease
renewal (every heartbeat_seconds), whichever comes first.

On SIGTERM/SIGINT the worker stops training at once and writes nothing: the lease runs out and
another worker resumes the trial from its last checkpoint. Database errors (a PostgreSQL
restart) are retried with exponential backoff; the trial being trained is not given up.

Run with `python -m app.worker [--gpus 0,1] [--max-trials N]`; settings come from SWEEPSERVE_*.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import shutil
import signal
import socket
import threading
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from sqlalchemy import Engine
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from app.artifacts import discard_superseded, start_attempt, trial_dir
from app.db import make_engine, session_factory, transaction, upgrade_to_head
from app.logs import configure_logging, log_context
from app.models import Trial
from app.queue import (
    Claim,
    Lease,
    LeaseLost,
    Outcome,
    claim_trial,
    fail_trial,
    finish_trial,
    pause_trial,
    record_epochs,
    register_worker,
    renew_lease,
    siblings,
    touch_worker,
    unregister_worker,
)
from app.settings import Settings, get_settings
from ml.config import EarlyStoppingSpec, JobSpec, TrainConfig
from ml.data import Dataset, load_dataset, make_splits
from ml.early_stopping import Verdict, verdict
from ml.environment import cuda_devices
from ml.train import Decision, EpochMetrics, TrialAborted, TrialHooks, TrialResult, run_trial

log = logging.getLogger("sweepserve.worker")

BACKOFF_FIRST_S = 0.5
BACKOFF_CAP_S = 10.0
DB_UNAVAILABLE = (OperationalError, InterfaceError)  # connection refused/dropped, SQLite busy past timeout
MAX_ERROR_CHARS = 4000

T = TypeVar("T")


def make_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


DECISION_OF = {
    Verdict.CONTINUE: Decision.CONTINUE,
    Verdict.STOP: Decision.PRUNE,
    Verdict.WAIT: Decision.PAUSE,
}


def decide(
    session: Session,
    claim: Claim,
    rule: EarlyStoppingSpec,
    history: Sequence[EpochMetrics],
    *,
    may_wait: bool = True,
) -> Decision:
    """What the job's early-stopping rule makes of this trial after its latest epoch: go on,
    PRUNE, or (ASHA) PAUSE while other trials of the job have still to reach this epoch.

    Runs inside the epoch's guarded transaction and reads the job's other trials in one query.
    A trial that has just trained its last epoch is finished, never pruned. `may_wait` is False
    when the trial resumes from a pause: it has waited at this rung once already.
    """
    max_epochs = int(claim.config["epochs"])
    if rule.strategy == "none" or len(history) >= max_epochs:
        return Decision.CONTINUE
    others = siblings(session, claim)
    waiting_for = may_wait and any(s.still_to_reach(len(history)) for s in others)
    mine = [m.val_accuracy for m in history]
    return DECISION_OF[verdict(rule, mine, [s.curve for s in others], max_epochs, may_wait=waiting_for)]


def retry_db(action: Callable[[], T], what: str, stop: threading.Event) -> T:
    """Run `action`, retrying while the database is unreachable (backoff capped at BACKOFF_CAP_S).

    Gives up (re-raises) only once `stop` is set, so a worker told to exit is not held hostage.
    """
    delay = BACKOFF_FIRST_S
    while True:
        try:
            return action()
        except DB_UNAVAILABLE as exc:
            if stop.is_set():
                raise
            log.warning("%s: database unavailable (%s); retrying in %.1f s", what, _first_line(exc), delay)
            stop.wait(delay)
            delay = min(delay * 2, BACKOFF_CAP_S)


def describe_error(exc: BaseException) -> str:
    """Exception type and message, plus where it was raised: what `trials.error` keeps."""
    text = f"{type(exc).__name__}: {exc}"
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        text += f" (at {frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name})"
    return text[:MAX_ERROR_CHARS]


@functools.lru_cache(maxsize=1)
def _dataset(name: str, data_dir: Path, download: bool) -> Dataset:
    # One decoded copy per process: trial after trial reuses it instead of reloading.
    return load_dataset(name, data_dir, download)


@dataclass(frozen=True)
class Watch:
    """What the lease keeper found about one claim; the trainer polls both."""

    claim: Claim
    lost: threading.Event = field(default_factory=threading.Event)  # taken over: stop, write nothing
    cancelled: threading.Event = field(default_factory=threading.Event)  # a user cancelled the job


class LeaseKeeper(threading.Thread):
    """Renews the current claim's lease and the worker's heartbeat every `interval` seconds."""

    def __init__(self, engine: Engine, worker_id: str, interval: float) -> None:
        super().__init__(name="lease-keeper", daemon=True)
        self.engine, self.worker_id, self.interval = engine, worker_id, interval
        self._watched: Watch | None = None
        self._halt = threading.Event()

    def watch(self, claim: Claim) -> Watch:
        """Keep `claim` alive; the Watch's events say when its lease is lost or a cancel arrives."""
        watched = Watch(claim)
        self._watched = watched  # one assignment: the thread sees the old watch or the new one
        return watched

    def unwatch(self) -> None:
        self._watched = None

    def run(self) -> None:
        with log_context(worker_id=self.worker_id):
            while not self._halt.wait(self.interval):
                self.beat()

    def beat(self) -> None:
        watched = self._watched
        try:
            touch_worker(self.engine, self.worker_id)
            if watched is not None:
                self._renew(watched)
        except DB_UNAVAILABLE as exc:
            # The lease may run out meanwhile; the first renewal that reaches the database says so.
            log.warning("heartbeat: database unavailable (%s)", _first_line(exc))

    def _renew(self, watched: Watch) -> None:
        lease = renew_lease(self.engine, watched.claim)
        if lease is Lease.HELD:
            return
        with log_context(job_id=watched.claim.job_id, trial_id=watched.claim.trial_id):
            log.warning("attempt %d: %s; stopping the trial", watched.claim.attempt, lease.value)
        (watched.lost if lease is Lease.LOST else watched.cancelled).set()

    def halt(self) -> None:
        self._halt.set()
        self.join()


class WorkerHooks(TrialHooks):
    """The trainer's callbacks: every epoch becomes a guarded database write."""

    def __init__(self, worker: WorkerLoop, spec: JobSpec, watch: Watch, trial_path: Path) -> None:
        self.worker, self.spec, self.watch, self.trial_path = worker, spec, watch, trial_path
        self.claim = watch.claim

    def restored(self, history: list[EpochMetrics]) -> Decision:
        def write(session: Session) -> Decision:
            if record_epochs(session, self.claim, [m.as_dict() for m in history]):
                return Decision.CANCEL
            return decide(session, self.claim, self.spec.early_stopping, history, may_wait=False)

        decision = self._write(write, "restore history")
        discard_superseded(self.trial_path)  # this attempt holds the trial, and copies of its files
        log.info("resumed after epoch %d -> %s", len(history), decision.value)
        return decision

    def epoch_end(self, metrics: EpochMetrics, history: list[EpochMetrics]) -> Decision:
        def write(session: Session) -> Decision:
            if record_epochs(session, self.claim, [m.as_dict() for m in history]):
                return Decision.CANCEL
            return decide(session, self.claim, self.spec.early_stopping, history)

        decision = self._write(write, f"epoch {metrics.epoch}")
        # The database just confirmed this attempt holds the trial and has its own last.pt.
        discard_superseded(self.trial_path)
        log.info("epoch %d: val accuracy %.4f -> %s", metrics.epoch, metrics.val_accuracy, decision.value)
        return decision

    def should_stop(self) -> bool:
        return self.watch.lost.is_set() or self.watch.cancelled.is_set() or self.worker.stop.is_set()

    def _write(self, action: Callable[[Session], T], what: str) -> T:
        try:
            return self.worker.in_transaction(action, what)
        except LeaseLost:
            self.watch.lost.set()
            raise


class WorkerLoop:
    """One worker process's loop; `run_worker` is the entry point."""

    def __init__(
        self, settings: Settings, engine: Engine, gpus: list[int] | None, stop: threading.Event
    ) -> None:
        self.settings, self.engine, self.gpus, self.stop = settings, engine, gpus, stop
        self.factory: sessionmaker[Session] = session_factory(engine)
        self.id = make_worker_id()
        self.keeper = LeaseKeeper(engine, self.id, settings.heartbeat_seconds)

    def in_transaction(self, action: Callable[[Session], T], what: str) -> T:
        def attempt() -> T:
            with transaction(self.factory) as session:
                return action(session)

        return retry_db(attempt, what, self.stop)

    def serve(self, max_trials: int | None) -> None:
        with log_context(worker_id=self.id):
            gpus = self.gpus
            self.in_transaction(
                lambda s: register_worker(s, self.id, socket.gethostname(), os.getpid(), gpus), "register"
            )
            self.keeper.start()
            log.info("worker started (gpus: %s)", "auto" if gpus is None else gpus or "cpu")
            try:
                done = self._loop(max_trials)
            finally:
                self.keeper.halt()
                self._unregister()
            log.info("worker stopped after %d trial(s)", done)

    def _loop(self, max_trials: int | None) -> int:
        done = 0
        while not self.stop.is_set() and (max_trials is None or done < max_trials):
            claim = self.in_transaction(
                lambda s: claim_trial(s, self.id, self.settings.lease_seconds), "claim"
            )
            if claim is None:
                self.stop.wait(self.settings.poll_seconds)
                continue
            with log_context(job_id=claim.job_id, trial_id=claim.trial_id):
                paused = self.process(claim)
            done += not paused  # max_trials counts trials taken to an end, not pauses
        return done

    def process(self, claim: Claim) -> bool:
        """Train the claimed trial and write back; returns whether it was paused (ASHA)."""
        log.info("claimed trial %d (index %d), attempt %d", claim.trial_id, claim.index, claim.attempt)
        watch = self.keeper.watch(claim)
        paused = False
        try:
            write_back = self._train(watch)
            if write_back is not None:
                # Only pause_trial's write-back answers "queued" (the others return None).
                paused = self.in_transaction(write_back, "write back") == "queued"
        except LeaseLost as exc:
            watch.lost.set()
            log.warning("writing nothing more: %s", exc)
        finally:
            self.keeper.unwatch()
        if watch.lost.is_set():
            self._tidy_lost_attempt(claim)
        return paused

    def _train(self, watch: Watch) -> Callable[[Session], object] | None:
        """Train; returns the write-back to make, or None when this attempt must write nothing."""
        claim = watch.claim
        try:
            result = self._run_trial(watch)
        except (TrialAborted, LeaseLost) as exc:
            if watch.cancelled.is_set() and not (watch.lost.is_set() or self.stop.is_set()):
                log.info("trial cancelled mid-epoch: %s", exc)
                cancelled = Outcome("cancelled", [], None, None, None)  # its epochs are already recorded
                return lambda session: finish_trial(session, claim, cancelled)
            why = "the worker is stopping" if self.stop.is_set() else "the lease was lost"
            log.warning("trial stopped (%s) without writing back: %s", why, exc)
            return None
        except Exception as exc:
            if self.stop.is_set() or watch.lost.is_set():
                log.warning("trial interrupted: %s", describe_error(exc))
                return None
            error = describe_error(exc)
            log.exception("attempt %d failed", claim.attempt)

            def record_failure(session: Session) -> None:
                log.info("trial is now %s", fail_trial(session, claim, error))

            return record_failure
        if result.status == "paused":
            log.info("trial paused after epoch %d, to wait for the others", len(result.history))
            history = [m.as_dict() for m in result.history]
            return lambda session: pause_trial(session, claim, history)
        log.info("trial %s (test accuracy %s)", result.status, result.test_accuracy)
        return lambda session: finish_trial(session, claim, self._outcome(result))

    def _run_trial(self, watch: Watch) -> TrialResult:
        claim = watch.claim
        spec = JobSpec.model_validate(claim.job_spec)
        cfg = TrainConfig.model_validate(claim.config)
        dataset = _dataset(spec.data.dataset, Path(self.settings.data_dir), self.settings.allow_download)
        splits = make_splits(dataset, spec.data, seed=cfg.seed)
        trial_path = trial_dir(self.settings.artifacts_dir, claim.job_id, claim.trial_id)
        return run_trial(
            cfg,
            splits,
            start_attempt(trial_path, claim.attempt),
            WorkerHooks(self, spec, watch, trial_path),
            device_ids=self.gpus,
            metadata={
                "job_id": claim.job_id,
                "trial_id": claim.trial_id,
                "trial_index": claim.index,
                "attempt": claim.attempt,
            },
            allow_download=self.settings.allow_download,
        )

    def _tidy_lost_attempt(self, claim: Claim) -> None:
        """A superseded attempt deletes what it may have written after the takeover: its folder
        once a newer attempt has a last.pt, the whole trial folder once the trial was deleted."""
        trial_path = trial_dir(self.settings.artifacts_dir, claim.job_id, claim.trial_id)
        try:
            exists = self.in_transaction(lambda s: s.get(Trial, claim.trial_id) is not None, "tidy")
        except DB_UNAVAILABLE:
            return  # the worker is stopping; the next attempt's retention tidies up
        if exists:
            deleted = discard_superseded(trial_path)
        else:
            shutil.rmtree(trial_path, ignore_errors=True)
            deleted = [claim.attempt]
        log.info("attempt %d superseded; deleted the files of attempt(s) %s", claim.attempt, deleted)

    def _outcome(self, result: TrialResult) -> Outcome:
        model_path = None
        if result.best_checkpoint is not None:
            artifacts = Path(self.settings.artifacts_dir).resolve()
            model_path = Path(result.best_checkpoint).resolve().relative_to(artifacts).as_posix()
        return Outcome(
            status=result.status,
            history=[m.as_dict() for m in result.history],
            test_accuracy=result.test_accuracy,
            environment=result.environment,
            model_path=model_path,
        )

    def _unregister(self) -> None:
        try:
            with transaction(self.factory) as session:
                unregister_worker(session, self.id)
        except DB_UNAVAILABLE as exc:
            log.warning("could not remove worker row %s: %s", self.id, _first_line(exc))


def run_worker(
    settings: Settings,
    gpus: list[int] | None = None,
    stop: threading.Event | None = None,
    max_trials: int | None = None,
) -> None:
    """Claim and train trials until `stop` is set, SIGTERM/SIGINT arrives or `max_trials` are done.

    gpus: CUDA device ids for every trial; None = all visible (or the CPU), [] = the CPU.
    """
    stop = stop or threading.Event()
    check_gpus(gpus)
    if settings.heartbeat_seconds >= settings.lease_seconds:
        log.warning(
            "heartbeat_seconds (%s) >= lease_seconds (%s): leases will expire between renewals",
            settings.heartbeat_seconds,
            settings.lease_seconds,
        )
    with _stop_on_signals(stop):
        retry_db(lambda: upgrade_to_head(settings.database_url), "migrate", stop)
        engine = make_engine(settings.database_url)
        try:
            WorkerLoop(settings, engine, gpus, stop).serve(max_trials)
        finally:
            engine.dispose()


def check_gpus(gpus: list[int] | None) -> None:
    """Refuse to start on GPUs this machine lacks: such a worker would claim trial after trial and
    fail each one, using up their attempts. ValueError names the ids."""
    ids = cuda_devices(gpus)  # raises when ids are given but CUDA is not available
    missing = [i for i in ids if i >= torch.cuda.device_count()]
    if missing:
        raise ValueError(
            f"--gpus {gpus}: no CUDA device {missing} (this machine has {torch.cuda.device_count()})"
        )


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may install handlers; the caller owns `stop`
        return

    def handle(signum: int, _frame: Any) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def main(argv: list[str] | None = None) -> None:
    """`python -m app.worker`: `sweepserve worker` plus --max-trials (for tests and batch runs)."""
    from app.cli import gpu_list  # the CLI's parser, so both spell --gpus the same way

    parser = argparse.ArgumentParser(prog="python -m app.worker", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--gpus", type=gpu_list, default=None, help="CUDA ids, e.g. 0,1; '' = CPU; default all"
    )
    parser.add_argument("--max-trials", type=int, default=None, help="exit after this many trials")
    args = parser.parse_args(argv)
    settings = get_settings()
    configure_logging(settings)
    run_worker(settings, gpus=args.gpus, max_trials=args.max_trials)


if __name__ == "__main__":
    main()
