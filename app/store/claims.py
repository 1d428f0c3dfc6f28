"""The worker's side of the queue: trials claimed atomically, leases renewed, results written
back under a lease guard. (Submission, cancellation and the job status: `app.store.jobs`.)

Trial transitions made by workers (all others are refused, see `ml.status.TRIAL_TRANSITIONS`):
    queued  -> running    `claim_trial`: attempts + 1, lease = database clock + lease_seconds
    running -> running    `claim_trial` again once the lease expired (the worker died or hung)
    running -> failed     lease expired after max_attempts failed attempts (swept before each claim),
                          or `fail_trial` on the last attempt
    running -> queued     `fail_trial` with attempts left: the next claim resumes from last.pt;
                          or `pause_trial` at an ASHA rung (pauses + 1; not a failure);
                          or `preempt_trial` when the worker got SIGTERM (preemptions + 1; not a failure)
    running -> cancelled  `finish_trial` after the worker saw cancel_requested (at an epoch
                          boundary, or mid-epoch through `renew_lease`); or `fail_trial`/an
                          expired lease when a cancel was requested
    running -> succeeded, pruned   `finish_trial`
(A user moves finished trials back to queued: `app.store.steering`.)
Every write-back is guarded by (trial id, worker id, attempt, status running): a worker whose
lease was taken over gets `LeaseLost` and writes nothing. Failed attempts are `attempts - pauses -
preemptions - attempts_forgiven`: a claim that ended in an ASHA pause or a SIGTERM preemption does
not count against `max_attempts`, nor do the failures before a user's retry.

Claim order: higher job priority first, then older jobs, then, within a job, the trials with the
fewest completed epochs (breadth first, so a paused trial resumes once the others caught up),
then the trial index.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Engine,
    String,
    and_,
    case,
    cast,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from app.errors import InvalidTransition, LeaseLost
from app.store.adaptive import ask_next_point, wants_a_point
from app.store.db import db_time
from app.store.jobs import get_job, lock_job, refresh_job_status
from app.store.registry import record_champion
from app.store.tables import EpochMetric, Job, RegisteredModel, Trial
from ml.selection import first_best
from ml.status import ACTIVE, ENDINGS, TRIAL_TRANSITIONS, JobStatus, TrialStatus

EPOCH_FIELDS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds",
                "images_per_second")  # fmt: skip


@dataclass(frozen=True)
class Claim:
    """One attempt at one trial by one worker; every write-back is checked against it."""

    trial_id: int
    job_id: int
    index: int
    attempt: int
    worker_id: str
    lease_seconds: float
    config: dict[str, Any]  # the trial's TrainConfig
    job_spec: dict[str, Any]  # the job's JobSpec
    extended: bool = False  # a user extended it: early stopping no longer applies


@dataclass(frozen=True)
class Outcome:
    """What a finished trainer reports; `history` rows have the `EPOCH_FIELDS` keys."""

    status: TrialStatus  # one of ml.status.ENDINGS
    history: Sequence[Mapping[str, Any]]
    test_accuracy: float | None
    environment: dict[str, Any] | None
    model_path: str | None  # best.pt's key in the artifact store; needed when succeeded
    model_size: int | None = None  # its bytes and sha256, checked whenever the model is loaded
    model_sha256: str | None = None
    val_images: int | None = None  # the accuracies were measured on (for their intervals)
    test_images: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", TrialStatus(self.status))  # "succeeded" -> the member


def check_transition(current: TrialStatus, new: TrialStatus) -> None:
    if not current.may_become(new):
        allowed = ", ".join(TRIAL_TRANSITIONS[current]) or "nothing"
        raise InvalidTransition(f"a {current} trial cannot become {new} (allowed: {allowed})")


def claim_trial(session: Session, worker_id: str, lease_seconds: float) -> Claim | None:
    """Claim the next trial; None when there is none.

    First `settle_expired_leases` ends the trials whose lease ran out for good; then ONE
    conditional UPDATE ... RETURNING takes the next claimable trial, and the job's status is
    refreshed in the same transaction. PostgreSQL picks the candidate with FOR UPDATE SKIP
    LOCKED, so concurrent workers each get a different row without waiting; SQLite serialises
    claims with BEGIN IMMEDIATE instead (its compiler leaves FOR UPDATE out).
    """
    settle_expired_leases(session)
    now = db_time(session.get_bind())  # type: ignore[arg-type]
    _ask_if_its_turn(session, now)
    candidate = aliased(Trial)
    pick = (
        select(candidate.id)
        .join(Job, Job.id == candidate.job_id)
        .where(_claimable(candidate, Job, now))
        .order_by(Job.priority.desc(), Job.id.asc(), candidate.epochs_done.asc(), candidate.index.asc())
        .limit(1)
        .with_for_update(of=candidate, skip_locked=True)
    )
    claimed = (
        update(Trial)
        .where(Trial.id == pick.scalar_subquery(), Trial.status.in_(ACTIVE))
        .values(
            status=TrialStatus.RUNNING,
            worker_id=worker_id,
            attempts=Trial.attempts + 1,
            lease_expires_at=now + lease_seconds,
            started_at=func.coalesce(Trial.started_at, func.now()),
            error=None,
        )
        .returning(Trial.id, Trial.job_id, Trial.index, Trial.attempts, Trial.config, Trial.extensions)
        .execution_options(synchronize_session=False)
    )
    row = session.execute(claimed).one_or_none()
    if row is None:
        return None
    refresh_job_status(session, row.job_id)  # takes the job's lock
    job = get_job(session, row.job_id)
    if _over_limit(session, job, row.id):
        return None
    return Claim(
        row.id, row.job_id, row.index, row.attempts, worker_id, lease_seconds, row.config, job.spec,
        extended=row.extensions > 0,
    )  # fmt: skip


def _ask_if_its_turn(session: Session, now: ColumnElement[float]) -> None:
    """A tpe or cmaes job that wants its next point creates it now, when it comes before every
    job with a claimable trial (by the claim order), so the claim below takes the new trial."""
    wanting = session.execute(
        select(Job.id, Job.priority)
        .where(wants_a_point())
        .order_by(Job.priority.desc(), Job.id.asc())
        .limit(1)
    ).one_or_none()
    if wanting is None:
        return
    candidate = aliased(Trial)
    ahead = session.execute(
        select(Job.id, Job.priority)
        .join(candidate, candidate.job_id == Job.id)
        .where(_claimable(candidate, Job, now))
        .order_by(Job.priority.desc(), Job.id.asc())
        .limit(1)
    ).one_or_none()
    if ahead is None or (-wanting.priority, wanting.id) < (-ahead.priority, ahead.id):
        ask_next_point(session, wanting.id)


def _claimable(trial: type[Trial], job: type[Job], now: ColumnElement[float]) -> ColumnElement[bool]:
    fresh = and_(trial.status == TrialStatus.QUEUED, job.status != JobStatus.CANCELLED, _has_room(job))
    abandoned = and_(
        trial.status == TrialStatus.RUNNING,
        trial.lease_expires_at < now,
        _failures(trial) < trial.max_attempts,
        trial.cancel_requested.is_(False),  # settle_expired_leases cancels those instead
    )
    return or_(fresh, abandoned)


def _running_count(job_id: Any) -> Any:
    running = aliased(Trial)
    return (
        select(func.count())
        .select_from(running)
        .where(running.job_id == job_id, running.status == TrialStatus.RUNNING)
        .scalar_subquery()
    )


def _has_room(job: type[Job]) -> ColumnElement[bool]:
    """The job's `max_concurrent_trials` is not reached (None: unlimited)."""
    return or_(job.max_concurrent_trials.is_(None), _running_count(job.id) < job.max_concurrent_trials)


def _over_limit(session: Session, job: Job, trial_id: int) -> bool:
    """After a claim, under the job's lock: concurrent claims (PostgreSQL's SKIP LOCKED lets two
    pick trials of one job at once) took the job over its limit. The later one undoes its claim."""
    if job.max_concurrent_trials is None:
        return False
    running = session.scalar(select(_running_count(job.id)))
    if running is None or running <= job.max_concurrent_trials:
        return False
    undo = {"status": TrialStatus.QUEUED, "worker_id": None, "lease_expires_at": None,
            "attempts": Trial.attempts - 1}  # fmt: skip
    session.execute(update(Trial).where(Trial.id == trial_id).values(**undo))
    return True


def _failures(trial: type[Trial]) -> ColumnElement[int]:
    """Claims that count against max_attempts: not ASHA pauses, not preemptions, not the failures
    a user's retry forgave."""
    return trial.attempts - trial.pauses - trial.preemptions - trial.attempts_forgiven


def settle_expired_leases(session: Session) -> int:
    """One statement ends running trials whose lease expired and that must not be resumed:
    failed when attempts are used up, cancelled when a cancel was requested. Returns how many."""
    now = db_time(session.get_bind())  # type: ignore[arg-type]
    dead = aliased(Trial)
    settle = and_(
        dead.status == TrialStatus.RUNNING,
        dead.lease_expires_at < now,
        or_(_failures(dead) >= dead.max_attempts, dead.cancel_requested.is_(True)),
    )
    failures = cast(_failures(Trial), String)
    cancelled = Trial.cancel_requested.is_(True)
    lease_error = literal("lease expired ") + failures + literal(" times (worker died?)")
    settled = (
        update(Trial)
        .where(Trial.id.in_(select(dead.id).where(settle).with_for_update(of=dead, skip_locked=True)))
        .values(
            status=case((cancelled, TrialStatus.CANCELLED.value), else_=TrialStatus.FAILED.value),
            error=case((cancelled, Trial.error), else_=lease_error),
            finished_at=func.now(),
        )
        .returning(Trial.job_id)
        .execution_options(synchronize_session=False)
    )
    job_ids = list(session.scalars(settled))
    for job_id in sorted(set(job_ids)):
        refresh_job_status(session, job_id)
    return len(job_ids)


class Lease(enum.Enum):
    """What renewing a lease found."""

    HELD = "held"
    CANCEL_REQUESTED = "cancel requested"  # still ours, but a user cancelled the job: stop now
    LOST = "lost"  # taken over or gone: stop and write nothing


def renew_lease(engine: Engine, claim: Claim) -> Lease:
    """Renew the lease and read cancel_requested in the same statement."""
    renew = (
        update(Trial)
        .where(_held_by(claim))
        .values(lease_expires_at=db_time(engine) + claim.lease_seconds)
        .returning(Trial.cancel_requested)
    )
    with engine.begin() as connection:
        row = connection.execute(renew).one_or_none()
    if row is None:
        return Lease.LOST
    return Lease.CANCEL_REQUESTED if row.cancel_requested else Lease.HELD


def record_epochs(session: Session, claim: Claim, history: Sequence[Mapping[str, Any]]) -> bool:
    """Store the epochs of `history` that the database lacks and the trial's running summary;
    returns whether a cancel was requested. Used after every epoch and on resume, so an epoch
    checkpointed but not yet recorded when a worker died is recorded by the next attempt."""
    lease = db_time(session.get_bind()) + claim.lease_seconds  # type: ignore[arg-type]  # an epoch proves life
    row = _write_history(session, claim, history, (Trial.cancel_requested,), lease_expires_at=lease)
    return bool(row.cancel_requested)


def record_plan(session: Session, claim: Claim, plan: Mapping[str, Any], epochs: int) -> None:
    """A time-budgeted trial's plan (ml.plan.Plan as a dict) and the epochs it plans. The plan is
    kept under environment["plan"]; the finished trial's environment holds it too."""
    _write_back(session, claim, (), environment={"plan": dict(plan)}, epochs=epochs)


def restore_epochs(session: Session, claim: Claim, history: Sequence[Mapping[str, Any]]) -> bool:
    """`record_epochs` at resume, which also deletes the epoch rows after the restored history:
    a trial continued from best.pt (its last.pt deleted by retention) goes on from its best epoch,
    so the later rows belong to a branch that no longer exists. Returns whether a cancel was requested."""
    cancel = record_epochs(session, claim, history)  # guarded: raises LeaseLost unless we hold it
    beyond = and_(EpochMetric.trial_id == claim.trial_id, EpochMetric.epoch > len(history))
    session.execute(delete(EpochMetric).where(beyond))
    return cancel


def _write_history(
    session: Session,
    claim: Claim,
    history: Sequence[Mapping[str, Any]],
    returning: tuple[Any, ...],
    **values: Any,
) -> Any:
    """One guarded UPDATE of the trial's summary (plus `values`), then the epoch rows it lacks."""
    best_index = first_best([m["val_accuracy"] for m in history])
    if best_index is not None:
        best = history[best_index]  # the rule of the trainer's best.pt
        values |= {
            "epochs_done": len(history),  # whatever the trainer's numbering
            "train_loss": history[-1]["train_loss"],
            "val_accuracy": best["val_accuracy"],
            "best_epoch": best["epoch"],
        }
    row = _write_back(session, claim, returning, **values)
    _insert_missing_epochs(session, claim, history)
    return row


def _insert_missing_epochs(session: Session, claim: Claim, history: Sequence[Mapping[str, Any]]) -> None:
    known = set(session.scalars(select(EpochMetric.epoch).where(EpochMetric.trial_id == claim.trial_id)))
    rows = [
        {"trial_id": claim.trial_id, "attempt": claim.attempt, **{k: m[k] for k in EPOCH_FIELDS}}
        for m in history
        if m["epoch"] not in known
    ]
    if rows:
        session.execute(insert(EpochMetric), rows)


def finish_trial(session: Session, claim: Claim, outcome: Outcome) -> TrialStatus:
    """End the attempt as succeeded, pruned or cancelled; a succeeded trial's best.pt is registered.

    Idempotent for the same attempt: when the connection dropped after the commit, the retry
    finds the trial already ended this way by this attempt and changes nothing.
    """
    if outcome.status not in ENDINGS:
        raise InvalidTransition(f"finish_trial ends a trial as {', '.join(ENDINGS)}, not {outcome.status}")
    if outcome.status is TrialStatus.SUCCEEDED and outcome.model_path is None:
        raise ValueError(f"trial {claim.trial_id} succeeded without a best checkpoint to register")
    if _already_ended(session, claim, outcome.status):
        return outcome.status
    row = _write_history(
        session,
        claim,
        outcome.history,
        (Trial.best_epoch, Trial.val_accuracy),
        status=outcome.status,
        test_accuracy=outcome.test_accuracy,
        environment=outcome.environment,
        finished_at=func.now(),
        **_image_counts(outcome),
    )
    # Locks in the claim's order: the trial's row (just written), then the job's, before the
    # model's insert share-locks the job row (see lock_job).
    lock_job(session, claim.job_id)
    if outcome.status is TrialStatus.SUCCEEDED:
        _register_model(session, claim, row, outcome)
        session.flush()
        # The alias history notes a new champion; a concurrent finish writing the same alias row
        # first only costs this note (the champion itself is computed on every read).
        with contextlib.suppress(IntegrityError), session.begin_nested():
            record_champion(session, f"best on validation (trial {claim.trial_id} registered its model)")
    session.flush()
    refresh_job_status(session, claim.job_id)
    return outcome.status


def _image_counts(outcome: Outcome) -> dict[str, int]:
    counts = {"val_images": outcome.val_images, "test_images": outcome.test_images}
    return {name: n for name, n in counts.items() if n}  # a cancel knows none: keep what is stored


def _register_model(session: Session, claim: Claim, row: Any, outcome: Outcome) -> None:
    """Register the trial's best.pt; an extended trial updates its model in place (same id, so a
    promotion or an alias of it follows the better weights)."""
    values = {
        "arch": claim.config["arch"],
        "epoch": row.best_epoch,
        "val_accuracy": row.val_accuracy,
        "test_accuracy": outcome.test_accuracy,
        "path": outcome.model_path,
        "size": outcome.model_size,
        "sha256": outcome.model_sha256,
        "archived_at": None,
    }
    model = session.scalar(select(RegisteredModel).where(RegisteredModel.trial_id == claim.trial_id))
    if model is None:
        session.add(RegisteredModel(job_id=claim.job_id, trial_id=claim.trial_id, **values))
    else:
        for name, value in values.items():
            setattr(model, name, value)


def fail_trial(session: Session, claim: Claim, error: str, *, retry: bool = True) -> TrialStatus:
    """The attempt raised: re-queue the trial while attempts are left, else fail it (a requested
    cancel wins); `retry=False` fails it at once (an out-of-memory would only recur). Returns the
    new status; the job goes on with its other trials."""
    current = _lock_held(session, claim, TrialStatus.FAILED)
    if current.cancel_requested:
        status, values = TrialStatus.CANCELLED, {"finished_at": func.now()}
    elif retry and current.failures < current.max_attempts:
        status, values = TrialStatus.QUEUED, {"worker_id": None, "lease_expires_at": None}
    else:
        status, values = TrialStatus.FAILED, {"finished_at": func.now()}
    _write_back(session, claim, (), status=status, error=error, **values)
    refresh_job_status(session, claim.job_id)
    return status


def preempt_trial(session: Session, claim: Claim) -> TrialStatus:
    """The worker was told to stop (SIGTERM/SIGINT): give the trial back to the queue at once, so
    another worker resumes it from last.pt within a poll instead of after the lease; `preemptions`
    + 1, which is not a failed attempt. A requested cancel wins. Returns the new status."""
    if _lock_held(session, claim, TrialStatus.QUEUED).cancel_requested:
        status, values = TrialStatus.CANCELLED, {"finished_at": func.now()}
    else:
        values = {"worker_id": None, "lease_expires_at": None, "preemptions": Trial.preemptions + 1}
        status = TrialStatus.QUEUED
    _write_back(session, claim, (), status=status, **values)
    refresh_job_status(session, claim.job_id)
    return status


def pause_trial(session: Session, claim: Claim, history: Sequence[Mapping[str, Any]]) -> TrialStatus:
    """ASHA paused the trial at a rung: back to the queue with its curve and last.pt, to be
    claimed again once the trials with fewer epochs have caught up. A requested cancel wins.
    Returns the new status."""
    if _lock_held(session, claim, TrialStatus.QUEUED).cancel_requested:
        status, values = TrialStatus.CANCELLED, {"finished_at": func.now()}
    else:
        values = {"worker_id": None, "lease_expires_at": None, "pauses": Trial.pauses + 1}
        status = TrialStatus.QUEUED
    _write_history(session, claim, history, (), status=status, **values)
    refresh_job_status(session, claim.job_id)
    return status


def _lock_held(session: Session, claim: Claim, new_status: TrialStatus) -> Any:
    """The held trial's failure count and cancel flag, locked: a cancel_job racing a re-queue must
    not see (or leave) a queued row. LeaseLost when this attempt no longer holds the trial."""
    current = session.execute(
        select(_failures(Trial).label("failures"), Trial.max_attempts, Trial.cancel_requested)
        .where(_held_by(claim))
        .with_for_update()
    ).one_or_none()
    if current is None:
        _raise_lost(session, claim, new_status)
    return current


def _already_ended(session: Session, claim: Claim, status: TrialStatus) -> bool:
    ended_by_us = select(Trial.id).where(_attempt_of(claim), Trial.status == status)
    return session.scalar(ended_by_us) is not None


@dataclass(frozen=True)
class Sibling:
    """Another trial of the same job, as early stopping sees it."""

    status: TrialStatus
    curve: list[float]  # validation accuracy per completed epoch

    def still_to_reach(self, epoch: int) -> bool:
        return self.status in ACTIVE and len(self.curve) < epoch


def goal_reached(session: Session, claim: Claim, val_accuracy: float, mine: float | None) -> bool:
    """Whether the job's `stop_when` goal is reached (by this trial's latest epoch, `mine`, or
    by any trial of the job); when it is, the job's queued trials are cancelled, in the epoch's
    guarded transaction."""
    best = session.scalar(select(func.max(Trial.val_accuracy)).where(Trial.job_id == claim.job_id))
    if max(best or 0.0, mine or 0.0) < val_accuracy:
        return False
    queued = and_(Trial.job_id == claim.job_id, Trial.status == TrialStatus.QUEUED)
    session.execute(update(Trial).where(queued).values(status=TrialStatus.CANCELLED, finished_at=func.now()))
    return True


def siblings(session: Session, claim: Claim) -> list[Sibling]:
    """The job's other trials with their validation curves, in one query (for early stopping)."""
    rows = session.execute(
        select(Trial.id, Trial.status, EpochMetric.val_accuracy)
        .outerjoin(EpochMetric, EpochMetric.trial_id == Trial.id)
        .where(Trial.job_id == claim.job_id, Trial.id != claim.trial_id)
        .order_by(Trial.id, EpochMetric.epoch)
    )
    found: dict[int, Sibling] = {}
    for trial_id, status, val_accuracy in rows:
        sibling = found.setdefault(trial_id, Sibling(status, []))
        if val_accuracy is not None:
            sibling.curve.append(val_accuracy)
    return list(found.values())


def _attempt_of(claim: Claim) -> ColumnElement[bool]:
    return and_(
        Trial.id == claim.trial_id, Trial.worker_id == claim.worker_id, Trial.attempts == claim.attempt
    )


def _held_by(claim: Claim) -> ColumnElement[bool]:
    return and_(_attempt_of(claim), Trial.status == TrialStatus.RUNNING)


def _write_back(session: Session, claim: Claim, returning: tuple[Any, ...], **values: Any) -> Any:
    """The guarded UPDATE every write-back goes through; LeaseLost when the guard matches nothing."""
    if "status" in values:
        check_transition(TrialStatus.RUNNING, values["status"])
    guarded = (
        update(Trial)
        .where(_held_by(claim))
        .values(**values)
        .returning(Trial.id, *returning)
        .execution_options(synchronize_session=False)
    )
    row = session.execute(guarded).one_or_none()
    if row is None:
        _raise_lost(session, claim, values.get("status"))
    return row


def _raise_lost(session: Session, claim: Claim, new_status: TrialStatus | None) -> None:
    now = session.execute(
        select(Trial.status, Trial.worker_id, Trial.attempts).where(Trial.id == claim.trial_id)
    ).one_or_none()
    if now is None:
        raise LeaseLost(f"trial {claim.trial_id} no longer exists")
    if new_status is not None and (now.worker_id, now.attempts) == (claim.worker_id, claim.attempt):
        check_transition(now.status, new_status)  # our own attempt, already finished: a caller bug
    raise LeaseLost(
        f"trial {claim.trial_id}: attempt {claim.attempt} by {claim.worker_id} lost its lease; the trial is "
        f"{now.status}, attempt {now.attempts} by {now.worker_id}"
    )
