"""The worker side of the queue with no-op trials: claim order, leases, guarded write-backs,
transitions, job status and cancellation. Every test runs on SQLite and PostgreSQL."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from app.errors import InvalidTransition, LeaseLost
from app.store.claims import (
    Claim,
    Lease,
    Outcome,
    check_transition,
    claim_trial,
    fail_trial,
    finish_trial,
    pause_trial,
    record_epochs,
    renew_lease,
)
from app.store.db import db_time, make_engine, session_factory, transaction
from app.store.jobs import cancel_job
from app.store.tables import EpochMetric, Job, RegisteredModel, Trial, Worker
from app.store.workers import register_worker, touch_worker, unregister_worker
from ml.status import TRIAL_TRANSITIONS, TrialStatus


def heartbeat(engine: Engine, claim: Claim) -> bool:
    """Renew the lease; False when the claim no longer holds the trial."""
    return renew_lease(engine, claim) is not Lease.LOST


LEASE = 30.0
Submit = Callable[..., list[int]]


def _claim(factory: sessionmaker[Session], worker: str = "w1", lease: float = LEASE) -> Claim | None:
    with transaction(factory) as session:
        return claim_trial(session, worker, lease)


def _must_claim(factory: sessionmaker[Session], worker: str = "w1") -> Claim:
    claim = _claim(factory, worker)
    assert claim is not None
    return claim


def _epoch(epoch: int, val_accuracy: float, train_loss: float = 1.0) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "train_loss": train_loss,
        "train_accuracy": 0.5,
        "val_loss": 1.0,
        "val_accuracy": val_accuracy,
        "lr": 0.1,
        "seconds": 1.0,
        "images_per_second": 100.0,
    }


def _trial(factory: sessionmaker[Session], trial_id: int) -> Trial:
    with factory() as session:
        trial = session.get(Trial, trial_id)
        assert trial is not None
        return trial


def _job(factory: sessionmaker[Session], job_id: int) -> Job:
    with factory() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def _epochs_in_db(factory: sessionmaker[Session], trial_id: int) -> list[tuple[int, int]]:
    with factory() as session:
        rows = session.execute(
            select(EpochMetric.epoch, EpochMetric.attempt)
            .where(EpochMetric.trial_id == trial_id)
            .order_by(EpochMetric.epoch)
        )
        return [tuple(row) for row in rows]  # type: ignore[misc]


def _succeeded(history: list[dict[str, Any]]) -> Outcome:
    return Outcome(
        "succeeded", history, test_accuracy=0.8, environment={"torch": "x"}, model_path="jobs/1/best.pt"
    )


def test_claims_follow_priority_then_submission_then_index(
    factory: sessionmaker[Session], submit: Submit
) -> None:
    first = submit(3, priority=0)
    urgent = submit(2, priority=5)
    last = submit(1, priority=0)
    claimed = [claim.trial_id for claim in iter(lambda: _claim(factory), None)]
    assert claimed == urgent + first + last


def test_each_trial_is_claimed_once_with_attempt_one(factory: sessionmaker[Session], submit: Submit) -> None:
    ids = submit(4)
    claims = [_must_claim(factory, f"w{i}") for i in range(4)]
    assert _claim(factory, "w9") is None
    assert sorted(c.trial_id for c in claims) == ids
    assert {c.attempt for c in claims} == {1}
    assert _trial(factory, ids[0]).worker_id == "w0"


def test_claim_sets_the_lease_on_the_database_clock(
    engine: Engine, factory: sessionmaker[Session], submit: Submit
) -> None:
    [trial_id] = submit(1)
    claim = _must_claim(factory)
    with factory() as session:
        now = session.scalar(select(db_time(engine)))
    trial = _trial(factory, trial_id)
    assert trial.status == "running" and trial.attempts == 1 and trial.started_at is not None
    assert trial.lease_expires_at is not None and now is not None
    assert now + LEASE - 5 < trial.lease_expires_at <= now + LEASE
    job = _job(factory, claim.job_id)
    assert job.status == "running" and job.started_at is not None
    assert claim.config["seed"] == 0 and claim.job_spec["max_attempts"] == 3


def test_expired_lease_is_reclaimed_with_the_next_attempt(
    factory: sessionmaker[Session], submit: Submit, expire_lease: Callable[[int], None]
) -> None:
    [trial_id] = submit(1)
    first = _must_claim(factory, "w1")
    assert _claim(factory, "w2") is None  # the lease still holds
    started_at = _trial(factory, trial_id).started_at
    expire_lease(trial_id)
    second = _must_claim(factory, "w2")
    assert (second.trial_id, second.attempt, first.attempt) == (trial_id, 2, 1)
    trial = _trial(factory, trial_id)
    assert (trial.worker_id, trial.attempts, trial.status) == ("w2", 2, "running")
    assert trial.started_at == started_at  # the first claim's start is kept


def test_lease_expiring_max_attempts_times_fails_the_trial(
    factory: sessionmaker[Session], submit: Submit, expire_lease: Callable[[int], None]
) -> None:
    [trial_id] = submit(1, max_attempts=2)
    for worker in ("w1", "w2"):
        _must_claim(factory, worker)
        expire_lease(trial_id)
    assert _claim(factory, "w3") is None
    trial = _trial(factory, trial_id)
    assert trial.status == "failed"
    assert trial.error == "lease expired 2 times (worker died?)"
    assert trial.finished_at is not None
    job = _job(factory, trial.job_id)
    assert job.status == "failed" and job.finished_at is not None


def test_heartbeat_renews_only_the_current_attempt(
    engine: Engine, factory: sessionmaker[Session], submit: Submit, expire_lease: Callable[[int], None]
) -> None:
    [trial_id] = submit(1)
    claim = _must_claim(factory)
    expire_lease(trial_id)
    assert heartbeat(engine, claim)
    assert _claim(factory, "w2") is None  # renewed: nobody can take it
    expire_lease(trial_id)
    _must_claim(factory, "w2")
    assert not heartbeat(engine, claim)


def test_a_zombie_attempt_cannot_overwrite_the_newer_one(
    factory: sessionmaker[Session], submit: Submit, expire_lease: Callable[[int], None]
) -> None:
    [trial_id] = submit(1)
    zombie = _must_claim(factory, "w1")
    with transaction(factory) as session:
        record_epochs(session, zombie, [_epoch(1, 0.3)])
    expire_lease(trial_id)  # w1 paused past its lease
    current = _must_claim(factory, "w2")
    # Same worker id again, but a newer attempt: the old claim is stale too.
    expire_lease(trial_id)
    current = _must_claim(factory, "w1")
    assert current.attempt == 3

    history = [_epoch(1, 0.3), _epoch(2, 0.9, train_loss=0.1)]
    writes: list[Callable[[Session], object]] = [
        lambda s: record_epochs(s, zombie, history),
        lambda s: finish_trial(s, zombie, _succeeded(history)),
        lambda s: fail_trial(s, zombie, "RuntimeError: boom"),
    ]
    for write in writes:
        with pytest.raises(LeaseLost, match="lost its lease"), transaction(factory) as session:
            write(session)
    trial = _trial(factory, trial_id)
    assert (trial.status, trial.epochs_done, trial.val_accuracy, trial.error) == ("running", 1, 0.3, None)
    assert _epochs_in_db(factory, trial_id) == [(1, 1)]

    with transaction(factory) as session:
        finish_trial(session, current, _succeeded(history))
    assert _epochs_in_db(factory, trial_id) == [(1, 1), (2, 3)]
    assert _trial(factory, trial_id).status == "succeeded"


def test_record_epochs_adds_missing_rows_once_and_tracks_the_best(
    factory: sessionmaker[Session], submit: Submit
) -> None:
    [trial_id] = submit(1)
    claim = _must_claim(factory)
    with transaction(factory) as session:
        assert record_epochs(session, claim, [_epoch(1, 0.4)]) is False
    # A resume hands over the checkpoint's whole history, including an epoch the DB never saw.
    restored = [_epoch(1, 0.4), _epoch(2, 0.7), _epoch(3, 0.6, train_loss=0.2)]
    for _ in range(2):
        with transaction(factory) as session:
            record_epochs(session, claim, restored)
    assert [epoch for epoch, _ in _epochs_in_db(factory, trial_id)] == [1, 2, 3]
    trial = _trial(factory, trial_id)
    assert (trial.epochs_done, trial.best_epoch, trial.val_accuracy, trial.train_loss) == (3, 2, 0.7, 0.2)


def test_success_registers_the_best_checkpoint(factory: sessionmaker[Session], submit: Submit) -> None:
    [trial_id] = submit(1, arch="resnet18_imagenet")
    claim = _must_claim(factory)
    history = [_epoch(1, 0.5), _epoch(2, 0.8), _epoch(3, 0.7)]
    with transaction(factory) as session:
        finish_trial(session, claim, _succeeded(history))
    with factory() as session:
        model = session.scalars(select(RegisteredModel)).one()
        trial = session.get(Trial, trial_id)
        job = session.get(Job, claim.job_id)
    assert (model.trial_id, model.job_id, model.arch) == (trial_id, claim.job_id, "resnet18_imagenet")
    assert (model.epoch, model.val_accuracy, model.test_accuracy, model.path) == (
        2,
        0.8,
        0.8,
        "jobs/1/best.pt",
    )
    assert trial is not None and job is not None
    assert (trial.status, trial.test_accuracy, trial.environment) == ("succeeded", 0.8, {"torch": "x"})
    assert trial.finished_at is not None
    assert (job.status, job.finished_at is not None) == ("succeeded", True)


@pytest.mark.parametrize(("current", "new"), [(a, b) for a in TrialStatus for b in TrialStatus])
def test_check_transition_follows_the_table(current: TrialStatus, new: TrialStatus) -> None:
    if new in TRIAL_TRANSITIONS[current]:
        check_transition(current, new)
    else:
        with pytest.raises(InvalidTransition, match=f"a {current} trial cannot become {new}"):
            check_transition(current, new)


def test_invalid_write_backs_are_refused(factory: sessionmaker[Session], submit: Submit) -> None:
    [trial_id] = submit(1)
    claim = _must_claim(factory)
    history = [_epoch(1, 0.5)]
    for status in ("queued", "failed", "running"):
        with pytest.raises(InvalidTransition), transaction(factory) as session:
            finish_trial(session, claim, Outcome(status, history, None, None, None))
    assert _trial(factory, trial_id).status == "running"
    with transaction(factory) as session:
        finish_trial(session, claim, Outcome("pruned", history, 0.4, None, None))
    # The attempt is over: finishing or failing it again is a succeeded/pruned -> x transition.
    with (
        pytest.raises(InvalidTransition, match="a pruned trial cannot become"),
        transaction(factory) as session,
    ):
        finish_trial(session, claim, _succeeded(history))
    with pytest.raises(InvalidTransition), transaction(factory) as session:
        fail_trial(session, claim, "ValueError: late")
    trial = _trial(factory, trial_id)
    assert (trial.status, trial.test_accuracy, trial.error) == ("pruned", 0.4, None)
    with factory() as session:
        assert session.scalar(select(func.count()).select_from(RegisteredModel)) == 0


def test_failures_requeue_until_attempts_run_out(factory: sessionmaker[Session], submit: Submit) -> None:
    [trial_id] = submit(1, max_attempts=2)
    claim = _must_claim(factory, "w1")
    with transaction(factory) as session:
        assert fail_trial(session, claim, "RuntimeError: first") == "queued"
    trial = _trial(factory, trial_id)
    assert (trial.status, trial.worker_id, trial.error, trial.lease_expires_at) == (
        "queued",
        None,
        "RuntimeError: first",
        None,
    )
    assert _job(factory, trial.job_id).status == "running"
    claim = _must_claim(factory, "w2")
    assert claim.attempt == 2 and _trial(factory, trial_id).error is None
    with transaction(factory) as session:
        assert fail_trial(session, claim, "RuntimeError: second") == "failed"
    trial = _trial(factory, trial_id)
    assert (trial.status, trial.error, trial.attempts) == ("failed", "RuntimeError: second", 2)
    assert _job(factory, trial.job_id).status == "failed"


def test_a_pause_requeues_with_the_curve_and_is_not_a_failed_attempt(
    factory: sessionmaker[Session], submit: Submit
) -> None:
    first, second = submit(2, max_attempts=1)
    claim = _must_claim(factory, "w1")
    assert claim.trial_id == first
    with transaction(factory) as session:
        assert pause_trial(session, claim, [_epoch(1, 0.4)]) == "queued"
    trial = _trial(factory, first)
    assert (trial.status, trial.worker_id, trial.epochs_done) == ("queued", None, 1)
    assert (trial.pauses, trial.attempts) == (1, 1)
    assert _epochs_in_db(factory, first) == [(1, 1)]
    # Breadth first: the trial with fewer completed epochs is claimed before the paused one.
    assert _must_claim(factory, "w2").trial_id == second
    resumed = _must_claim(factory, "w3")
    assert (resumed.trial_id, resumed.attempt) == (first, 2)  # max_attempts 1, yet claimable
    with transaction(factory) as session:
        assert fail_trial(session, resumed, "RuntimeError: boom") == "failed"  # its one real failure


def test_a_cancel_requested_during_the_epoch_wins_over_a_pause(
    factory: sessionmaker[Session], submit: Submit
) -> None:
    [trial_id] = submit(1)
    claim = _must_claim(factory)
    with transaction(factory) as session:
        cancel_job(session, claim.job_id)
    with transaction(factory) as session:
        assert pause_trial(session, claim, [_epoch(1, 0.4)]) == "cancelled"
    assert _trial(factory, trial_id).status == "cancelled"
    assert _job(factory, claim.job_id).finished_at is not None


def test_job_status_is_derived_from_its_trials(factory: sessionmaker[Session], submit: Submit) -> None:
    ids = submit(2, max_attempts=1)
    job_id = _trial(factory, ids[0]).job_id
    assert _job(factory, job_id).status == "queued"
    good, bad = _must_claim(factory), _must_claim(factory)
    assert _job(factory, job_id).status == "running"
    with transaction(factory) as session:
        assert fail_trial(session, bad, "FloatingPointError: loss is nan") == "failed"
    assert _job(factory, job_id).status == "running"  # the job goes on with its other trial
    with transaction(factory) as session:
        finish_trial(session, good, _succeeded([_epoch(1, 0.9)]))
    job = _job(factory, job_id)
    assert (job.status, job.finished_at is not None) == ("succeeded", True)


def test_cancel_stops_queued_trials_now_and_running_ones_at_a_boundary(
    factory: sessionmaker[Session], submit: Submit
) -> None:
    running_id, queued_id = submit(2)
    claim = _must_claim(factory)
    with transaction(factory) as session:
        assert record_epochs(session, claim, [_epoch(1, 0.3)]) is False
        cancel_job(session, claim.job_id)
    assert _trial(factory, queued_id).status == "cancelled"
    assert _trial(factory, running_id).status == "running"
    assert _job(factory, claim.job_id).finished_at is None  # one trial still has to stop
    assert _claim(factory, "w2") is None
    with transaction(factory) as session:
        assert record_epochs(session, claim, [_epoch(1, 0.3), _epoch(2, 0.4)]) is True
    with transaction(factory) as session:
        finish_trial(session, claim, Outcome("cancelled", [_epoch(1, 0.3), _epoch(2, 0.4)], None, None, None))
    trial = _trial(factory, running_id)
    assert (trial.status, trial.epochs_done) == ("cancelled", 2)
    job = _job(factory, claim.job_id)
    assert (job.status, job.finished_at is not None) == ("cancelled", True)


def test_cancel_requested_wins_over_retry_and_reclaim(
    factory: sessionmaker[Session], submit: Submit, expire_lease: Callable[[int], None]
) -> None:
    raised_id, died_id = submit(2)
    raised, died = _must_claim(factory), _must_claim(factory)
    with transaction(factory) as session:
        cancel_job(session, raised.job_id)
    with transaction(factory) as session:
        assert fail_trial(session, raised, "RuntimeError: boom") == "cancelled"
    expire_lease(died_id)  # its worker died: nothing to resume for a cancelled job
    assert _claim(factory, "w2") is None
    assert [_trial(factory, i).status for i in (raised_id, died_id)] == ["cancelled", "cancelled"]
    assert died.attempt == _trial(factory, died_id).attempts == 1
    assert _job(factory, died.job_id).finished_at is not None


def test_workers_register_and_heartbeat(engine: Engine, factory: sessionmaker[Session]) -> None:
    with transaction(factory) as session:
        register_worker(session, "host:1:abc", "host", 1, [0, 1])
    first = _worker(factory, "host:1:abc")
    assert (first.hostname, first.pid, first.gpus) == ("host", 1, "0,1")
    assert first.heartbeat_at is not None
    touch_worker(engine, "host:1:abc")
    assert (_worker(factory, "host:1:abc").heartbeat_at or 0) >= first.heartbeat_at
    with transaction(factory) as session:
        unregister_worker(session, "host:1:abc")
    with factory() as session:
        assert session.get(Worker, "host:1:abc") is None


def _worker(factory: sessionmaker[Session], worker_id: str) -> Worker:
    with factory() as session:
        worker = session.get(Worker, worker_id)
        assert worker is not None
        return worker


# --- the claim race: worker processes, not threads ------------------------------------------------

RACE_TRIALS = 200
RACE_WORKERS = 4


def _drain_queue(url: str, worker_id: str, start: Any, out: Path) -> None:
    """Claim and finish (as a no-op, pruned) until the queue is empty; write the ids claimed."""
    engine = make_engine(url)
    factory = session_factory(engine)
    claimed: list[int] = []
    start.wait()
    while (claim := _claim(factory, worker_id)) is not None:
        claimed.append(claim.trial_id)
        with transaction(factory) as session:
            finish_trial(session, claim, Outcome("pruned", [], None, None, None))
    out.write_text(",".join(map(str, claimed)))
    engine.dispose()


@pytest.mark.slow
def test_claim_race_between_processes_claims_every_trial_once(
    db_url: str, factory: sessionmaker[Session], submit: Submit, tmp_path: Path
) -> None:
    ids = set(submit(RACE_TRIALS // 2)) | set(submit(RACE_TRIALS // 2, priority=1))
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    outs = [tmp_path / f"claimed-{i}.txt" for i in range(RACE_WORKERS)]
    procs = [
        ctx.Process(target=_drain_queue, args=(db_url, f"race-{i}", start, out)) for i, out in enumerate(outs)
    ]
    for proc in procs:
        proc.start()
    start.set()
    for proc in procs:
        proc.join(timeout=120)
    assert [proc.exitcode for proc in procs] == [0] * RACE_WORKERS
    per_worker = [[int(x) for x in out.read_text().split(",") if x] for out in outs]
    everything = [trial_id for claimed in per_worker for trial_id in claimed]
    assert len(everything) == len(set(everything)) == RACE_TRIALS
    assert set(everything) == ids
    assert sum(1 for claimed in per_worker if claimed) >= 2, "the race never happened"
    with factory() as session:
        rows = session.execute(select(Trial.status, Trial.attempts)).all()
    assert {tuple(row) for row in rows} == {("pruned", 1)}
