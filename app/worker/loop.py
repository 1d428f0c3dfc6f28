"""The worker's loop: claim a trial, train it with `ml.train.run_trial`, write the results back; repeat.

A claim is one attempt, held under a lease that a background thread renews. Write-backs go
through app.store.claims' guarded statements, so an attempt whose lease was taken over (the worker
was paused, or the database was unreachable for too long) gets `LeaseLost`, stops training
and writes nothing more; the attempt that took over resumes from the newest earlier attempt's
last.pt. Each attempt writes its checkpoints in a folder (or, in object storage, under keys) of its
own (see app.worker.files), so a zombie's files are never read.

At each epoch boundary the job's early-stopping rule (ASHA, median) decides whether the trial
goes on; a pruned trial keeps its curve and checkpoints and is tested once on its best.pt.
ASHA may also pause a trial at a rung until the job's other trials reach it (see
ml.early_stopping): the worker puts it back in the queue and claims the next; the claim that
resumes it decides again, at once, before training on.
A cancel is seen at the next epoch boundary, or within POLL_EVERY batches of the next lease
renewal (every heartbeat_seconds), whichever comes first.

On SIGTERM/SIGINT the worker stops training at the next step (`should_stop` is polled after
every step), gives the trial back at once (`preempt_trial`: queued, `preemptions` + 1, not a
failed attempt; the lease is released, so another worker resumes it from the last epoch's
last.pt within its poll) and exits. That last write-back is tried PREEMPT_TRIES times; with the
database gone (PostgreSQL connects time out after 5 s) the worker exits anyway and the lease
runs out instead, which counts as a failed attempt, as a kill -9 does. Database errors (a
PostgreSQL restart) are otherwise retried with exponential backoff; the trial being trained is
not given up.

Run with `sweepserve worker [--gpus 0,1] [--max-trials N]`; settings come from SWEEPSERVE_*.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.errors import LeaseLost
from app.ops.logs import log_context
from app.settings import Settings
from app.store.artifacts import open_store
from app.store.checkpoints import named_keys
from app.store.claims import (
    Claim,
    Outcome,
    claim_trial,
    fail_trial,
    finish_trial,
    pause_trial,
    preempt_trial,
)
from app.store.db import PG_CONNECT_TIMEOUT_S, make_engine, session_factory, transaction, upgrade_to_head
from app.store.final_test import record_final_test, untested_selection
from app.store.retention import delete_files, plan_retention
from app.store.tables import Trial
from app.store.workers import register_worker, unregister_worker
from app.worker.files import TrialFiles
from app.worker.hooks import WorkerHooks
from app.worker.lease import LeaseKeeper, Watch
from app.worker.memory import apply_memory_limit, is_out_of_memory, out_of_memory_error, release_memory
from app.worker.retry import DB_UNAVAILABLE, describe_error, first_line, retry_db
from ml.config import TrainConfig
from ml.data import Dataset, load_dataset, make_splits, without_test
from ml.engine import TrialAborted, TrialResult
from ml.environment import cuda_devices
from ml.job import JobSpec
from ml.status import ACTIVE, TrialStatus
from ml.train import run_trial, score_on_test

log = logging.getLogger("sweepserve.worker")

T = TypeVar("T")

PREEMPT_TRIES = 2  # a stopping worker's tries to give its trial back before it exits anyway


@dataclass(frozen=True)
class WriteBack:
    """The statement that ends an attempt, returning the trial's new status."""

    statement: Callable[[Session], TrialStatus]
    pause: bool = False  # an ASHA pause: the trial goes back to the queue, not a failure
    release: bool = False  # an out-of-memory: free what the failed step held before going on
    preempt: bool = False  # the worker is stopping: tried PREEMPT_TRIES times, whatever `stop` says


def make_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@functools.lru_cache(maxsize=1)
def _dataset(name: str, data_dir: Path, download: bool) -> Dataset:
    # One decoded copy per process: trial after trial reuses it instead of reloading.
    return load_dataset(name, data_dir, download)


class WorkerLoop:
    """One worker process's loop; `run_worker` is the entry point."""

    def __init__(
        self, settings: Settings, engine: Engine, gpus: list[int] | None, stop: threading.Event
    ) -> None:
        self.settings, self.engine, self.gpus, self.stop = settings, engine, gpus, stop
        self.factory: sessionmaker[Session] = session_factory(engine)
        self.id = make_worker_id()
        self.store = open_store(settings)
        self.keeper = LeaseKeeper(engine, self.id, settings.heartbeat_seconds)

    def in_transaction(self, action: Callable[[Session], T], what: str, tries: int | None = None) -> T:
        def attempt() -> T:
            with transaction(self.factory) as session:
                return action(session)

        return retry_db(attempt, what, self.stop, tries)

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
                self.keeper.halt(timeout=PG_CONNECT_TIMEOUT_S + 1)
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
            done += not paused  # max_trials counts attempts taken to an end, not pauses
        return done

    def process(self, claim: Claim) -> bool:
        """Train the claimed trial and write back; returns whether it was paused (ASHA) and is
        back in the queue."""
        log.info("claimed trial %d (index %d), attempt %d", claim.trial_id, claim.index, claim.attempt)
        watch = self.keeper.watch(claim)
        files = TrialFiles(self.store, claim)
        paused = False
        try:
            write_back = self._train(watch, files)
            if write_back is not None and write_back.release:
                release_memory()  # out of the except block: the traceback no longer pins the tensors
            if write_back is not None and write_back.preempt:
                self._give_back(write_back)
            elif write_back is not None:
                status = self.in_transaction(write_back.statement, "write back")
                paused = write_back.pause and status is TrialStatus.QUEUED  # a cancel may have won
                if status not in ACTIVE and not self.stop.is_set():
                    self._test_selection(claim)
                if status.finished:
                    self._retain(claim.job_id)
        except LeaseLost as exc:
            watch.lost.set()
            log.warning("writing nothing more: %s", exc)
        finally:
            self.keeper.unwatch()
        if watch.lost.is_set():
            self._tidy_lost_attempt(files)
        files.close()
        return paused

    def _retain(self, job_id: int) -> None:
        """Apply the job's retention policy now that one of its trials finished (app.store.retention)."""
        try:
            deletions = self.in_transaction(lambda s: plan_retention(s, job_id, self.store), "retention")
            delete_files(self.store, deletions)
        except Exception as exc:  # the trial is written back; retention runs again after the next one
            log.warning("retention of job %d skipped: %s", job_id, describe_error(exc))
            return
        if deletions.keys or deletions.prefixes:
            log.info(
                "retention: deleted %d file(s), archived trial(s) %s",
                len(deletions.keys),
                deletions.archived_trials,
            )

    def _give_back(self, write_back: WriteBack) -> None:
        """The worker is stopping: release the trial now, or leave it to its lease."""
        self.keeper.unwatch()  # a renewal racing the release would only find the lease gone
        try:
            status = self.in_transaction(write_back.statement, "give the trial back", tries=PREEMPT_TRIES)
            log.info("worker stopping: trial given back (%s)", status)
        except DB_UNAVAILABLE as exc:
            log.warning("could not give the trial back (%s): its lease will run out", first_line(exc))

    def _train(self, watch: Watch, files: TrialFiles) -> WriteBack | None:
        """Train; returns the write-back to make, or None when this attempt must write nothing."""
        claim = watch.claim
        try:
            result = self._run_trial(watch, files)
        except (TrialAborted, LeaseLost) as exc:
            if watch.cancelled.is_set() and not (watch.lost.is_set() or self.stop.is_set()):
                log.info("trial cancelled mid-epoch: %s", exc)
                cancelled = Outcome(TrialStatus.CANCELLED, [], None, None, None)  # epochs already recorded
                return WriteBack(lambda session: finish_trial(session, claim, cancelled))
            if self.stop.is_set() and not watch.lost.is_set():
                log.info("trial preempted (the worker is stopping): %s", exc)
                return WriteBack(lambda session: preempt_trial(session, claim), preempt=True)
            log.warning("trial stopped (the lease was lost) without writing back: %s", exc)
            return None
        except Exception as exc:
            if self.stop.is_set() and not watch.lost.is_set():
                # e.g. an epoch's write-back gave up on an unreachable database once stop was set
                log.warning("trial interrupted while stopping: %s", describe_error(exc))
                return WriteBack(lambda session: preempt_trial(session, claim), preempt=True)
            if watch.lost.is_set():
                log.warning("trial interrupted: %s", describe_error(exc))
                return None
            log.exception("attempt %d failed", claim.attempt)
            error, retry = describe_error(exc), True
            if is_out_of_memory(exc):  # the same batch on the same worker would only fail again
                device = "GPU" if self.gpus != [] and torch.cuda.is_available() else "CPU"
                error, retry = out_of_memory_error(claim.config["batch_size"], device), False

            def record_failure(session: Session) -> TrialStatus:
                status = fail_trial(session, claim, error, retry=retry)
                log.info("trial is now %s", status)
                return status

            return WriteBack(record_failure, release=not retry)
        if result.status is TrialStatus.QUEUED:
            log.info("trial paused after epoch %d, to wait for the others", len(result.history))
            history = [m.as_dict() for m in result.history]
            return WriteBack(lambda session: pause_trial(session, claim, history), pause=True)
        log.info("trial %s (test accuracy %s)", result.status, result.test_accuracy)
        outcome = self._outcome(result, files)
        return WriteBack(lambda session: finish_trial(session, claim, outcome))

    def _run_trial(self, watch: Watch, files: TrialFiles) -> TrialResult:
        claim = watch.claim
        spec = JobSpec.model_validate(claim.job_spec)
        cfg = TrainConfig.model_validate(claim.config)
        dataset = _dataset(spec.data.dataset, Path(self.settings.data_dir), self.settings.allow_download)
        splits = make_splits(dataset, spec.data)  # split_seed: the same split for every trial
        if spec.data.test == "best":
            splits = without_test(splits)  # the job's selection is tested once, at its end
        recorded, models = ({}, set()) if self.store.local else self._named_keys(claim.trial_id)
        return run_trial(
            cfg,
            splits,
            files.prepare(recorded, models),  # ArtifactCorrupt/ArtifactMissing: the attempt fails, saying why
            WorkerHooks(self.in_transaction, self.stop, spec, watch, files),
            device_ids=self.gpus,
            metadata={
                "job_id": claim.job_id,
                "trial_id": claim.trial_id,
                "trial_index": claim.index,
                "attempt": claim.attempt,
            },
            allow_download=self.settings.allow_download,
        )

    def _test_selection(self, claim: Claim) -> None:
        """data.test "best": once the job's last trial has ended, test its selected trial(s)."""
        spec = JobSpec.model_validate(claim.job_spec)
        if spec.data.test != "best":
            return
        models = self.in_transaction(lambda s: untested_selection(s, claim.job_id), "selection")
        if not models:
            return
        dataset = _dataset(spec.data.dataset, Path(self.settings.data_dir), self.settings.allow_download)
        splits = make_splits(dataset, spec.data)
        for model in models:
            try:
                accuracy = score_on_test(self.store.get(model.blob), splits, self.gpus)
            except Exception as exc:  # the job's trials are done; this worker goes on regardless
                log.warning("could not test selected trial %d: %s", model.trial_id, describe_error(exc))
                continue
            n = len(splits.test_y)
            self.in_transaction(
                lambda s, m=model, a=accuracy, n=n: record_final_test(s, m.trial_id, a, n), "final test"
            )
            log.info("selected trial %d tested: %.4f", model.trial_id, accuracy)

    def _named_keys(self, trial_id: int) -> tuple[dict, set[str]]:
        return self.in_transaction(lambda s: named_keys(s, trial_id), "read checkpoints")

    def _tidy_lost_attempt(self, files: TrialFiles) -> None:
        """A superseded attempt deletes what it may have written after the takeover: its folder
        (or keys) once a newer attempt has its own, all the trial's files once it was deleted."""
        claim = files.claim

        def look(session: Session) -> tuple[bool, dict, set[str]]:
            exists = session.get(Trial, claim.trial_id) is not None
            return exists, *(named_keys(session, claim.trial_id) if exists else ({}, set()))

        try:
            exists, recorded, models = self.in_transaction(look, "tidy")
        except DB_UNAVAILABLE:
            return  # the worker is stopping; the next attempt's retention tidies up
        deleted = files.superseded(exists, recorded, models)
        log.info("attempt %d superseded; deleted the files of attempt(s) %s", claim.attempt, deleted)

    def _outcome(self, result: TrialResult, files: TrialFiles) -> Outcome:
        model = files.model(result.best_checkpoint)
        return Outcome(
            status=result.status,
            history=[m.as_dict() for m in result.history],
            test_accuracy=result.test_accuracy,
            environment=result.environment,
            model_path=model.key if model else None,
            model_size=model.size if model else None,
            model_sha256=model.sha256 if model else None,
            val_images=result.val_images,
            test_images=result.test_images,
        )

    def _unregister(self) -> None:
        try:
            with transaction(self.factory) as session:
                unregister_worker(session, self.id)
        except DB_UNAVAILABLE as exc:
            log.warning("could not remove worker row %s: %s", self.id, first_line(exc))


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
    apply_memory_limit(settings.worker_memory_limit_mb)
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
