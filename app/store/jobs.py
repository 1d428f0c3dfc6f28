"""Jobs and their trials as the API sees them: submission, reads, cancellation, deletion, and
the job status derived from its trials.

A job's status follows its trials (`refresh_job_status`, called in the same transaction as every
trial transition); the worker-side statements that move trials are in `app.store.claims`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Update, delete, func, select, update
from sqlalchemy.orm import Session, selectinload

from app.errors import Conflict, IdempotencyMismatch, NotFound
from app.store.tables import EpochMetric, Job, RegisteredModel, Trial
from ml.config import DataConfig, TrainConfig
from ml.eta import remaining_seconds
from ml.job import JobSpec
from ml.search import TrialPoint
from ml.status import ACTIVE, JobStatus, TrialStatus


def submit_job(session: Session, spec: JobSpec, idempotency_key: str | None = None) -> tuple[Job, bool]:
    """Insert a job and its trials; returns (job, created). Same key + same spec returns the original."""
    digest = spec.digest()
    if idempotency_key is not None:
        existing = session.scalar(select(Job).where(Job.idempotency_key == idempotency_key))
        if existing is not None:
            if existing.spec_digest != digest:
                raise IdempotencyMismatch(
                    f"Idempotency-Key {idempotency_key!r} was already used for job {existing.id} "
                    "with a different body"
                )
            return existing, False
    job = Job(
        name=spec.name,
        status=JobStatus.QUEUED,
        spec=spec.model_dump(mode="json"),
        spec_digest=digest,
        idempotency_key=idempotency_key,
        priority=spec.priority,
        max_concurrent_trials=spec.max_concurrent_trials,
        trials_target=(spec.search.trials or 0) * spec.search.repeats if spec.search.adaptive else None,
    )
    job.trials = new_trials(spec.points, spec.max_attempts)
    session.add(job)
    session.flush()
    return job, True


def new_trials(points: Sequence[TrialPoint], max_attempts: int) -> list[Trial]:
    """The rows of trials to queue, one per `TrialPoint`."""
    return [
        Trial(
            index=point.index,
            point=point.point,
            params=point.params,
            config=point.config.model_dump(mode="json"),
            status=TrialStatus.QUEUED,
            epochs=point.config.epochs,
            max_attempts=max_attempts,
        )
        for point in points
    ]


def get_job(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"job {job_id} does not exist")
    return job


def get_trial(session: Session, job_id: int, trial_id: int) -> Trial:
    """A trial of the job, with its per-epoch history loaded."""
    get_job(session, job_id)
    trial = session.scalar(
        select(Trial).where(Trial.id == trial_id, Trial.job_id == job_id).options(selectinload(Trial.history))
    )
    if trial is None:
        raise NotFound(f"trial {trial_id} is not in job {job_id}")
    return trial


@dataclass(frozen=True)
class JobRow:
    """A job as a list shows it: its row, trials per status, and its best validation accuracy."""

    job: Job
    counts: dict[str, int]
    best_val_accuracy: float | None


def list_jobs(
    session: Session, limit: int, before_id: int | None = None, status: JobStatus | None = None
) -> tuple[list[JobRow], bool]:
    """Up to `limit` jobs, newest first, with ids below `before_id`; and whether more follow.
    Three queries whatever the page size: the jobs, then their trial counts and best accuracies."""
    query = select(Job).order_by(Job.id.desc()).limit(limit + 1)  # one extra row says "more follow"
    if before_id is not None:
        query = query.where(Job.id < before_id)
    if status is not None:
        query = query.where(Job.status == status)
    jobs = list(session.scalars(query))
    page = jobs[:limit]
    ids = [job.id for job in page]
    counts = _trial_counts_of(session, ids)
    best = _best_val_accuracies(session, ids)
    return [JobRow(job, counts[job.id], best.get(job.id)) for job in page], len(jobs) > limit


def _trial_counts_of(session: Session, job_ids: list[int]) -> dict[int, dict[str, int]]:
    rows = session.execute(
        select(Trial.job_id, Trial.status, func.count())
        .where(Trial.job_id.in_(job_ids))
        .group_by(Trial.job_id, Trial.status)
    )
    counts: dict[int, dict[str, int]] = defaultdict(dict)
    for job_id, status, count in rows:
        counts[job_id][status] = count
    return counts


def _best_val_accuracies(session: Session, job_ids: list[int]) -> dict[int, float]:
    rows = session.execute(
        select(Trial.job_id, func.max(Trial.val_accuracy))
        .where(Trial.job_id.in_(job_ids))
        .group_by(Trial.job_id)
    )
    return {job_id: value for job_id, value in rows if value is not None}


def model_of_trial(session: Session, trial_id: int) -> int | None:
    """The id of the model a trial registered, if it did."""
    return session.scalar(select(RegisteredModel.id).where(RegisteredModel.trial_id == trial_id))


def job_history(session: Session, job_id: int) -> dict[int, list[EpochMetric]]:
    """Every trial's epoch rows (trial id -> rows in epoch order), trials in index order."""
    get_job(session, job_id)
    trial_ids = session.scalars(select(Trial.id).where(Trial.job_id == job_id).order_by(Trial.index))
    history: dict[int, list[EpochMetric]] = {trial_id: [] for trial_id in trial_ids}
    rows = session.scalars(
        select(EpochMetric)
        .join(Trial, Trial.id == EpochMetric.trial_id)
        .where(Trial.job_id == job_id)
        .order_by(EpochMetric.trial_id, EpochMetric.epoch)
    )
    for row in rows:
        history[row.trial_id].append(row)
    return history


def cancel_job(session: Session, job_id: int) -> Job:
    """Queued trials become cancelled now; running ones are asked to stop at their next boundary."""
    job = get_job(session, job_id)
    if not job.status.active:
        raise Conflict(f"job {job_id} is already {job.status}; only queued or running jobs can be cancelled")
    session.execute(
        _trials_of(job_id, TrialStatus.QUEUED).values(status=TrialStatus.CANCELLED, finished_at=func.now())
    )
    session.execute(_trials_of(job_id, TrialStatus.RUNNING).values(cancel_requested=True))
    job.status = JobStatus.CANCELLED
    session.flush()
    _set_finished_if_done(session, job)
    return job


def _trials_of(job_id: int, status: TrialStatus) -> Update:
    return update(Trial).where(Trial.job_id == job_id, Trial.status == status)


def delete_job(session: Session, job_id: int) -> list[int]:
    """Delete a finished job's rows (trials, epochs and models cascade); returns the ids of the
    models that went with it. Its files are the caller's to remove, after the commit."""
    job = get_job(session, job_id)
    if job.status.active:
        raise Conflict(f"job {job_id} is {job.status}; cancel it first")
    if job.finished_at is None:
        raise Conflict(f"job {job_id} still has trials stopping after its cancellation; retry shortly")
    model_ids = list(session.scalars(select(RegisteredModel.id).where(RegisteredModel.job_id == job_id)))
    session.execute(delete(Job).where(Job.id == job_id))  # the foreign keys cascade
    return model_ids


def lock_job(session: Session, job_id: int) -> Job | None:
    """The job's row, locked for the transaction (PostgreSQL; SQLite's BEGIN IMMEDIATE already
    serialises writers). Lock order: trial rows, then the job's row, then inserts of the job's
    trials or models. A claim locks its trial and then the job; an insert's foreign-key check
    share-locks the job row, and two such transactions would deadlock upgrading to this lock,
    so whoever inserts takes this lock first (after the trial rows it writes)."""
    sqlite = session.get_bind().dialect.name == "sqlite"
    return session.get(Job, job_id, with_for_update=not sqlite, populate_existing=not sqlite)


def refresh_job_status(session: Session, job_id: int) -> None:
    """Derive a job's status from its trials after a trial transition (same transaction)."""
    job = lock_job(session, job_id)
    if job is None:
        return
    counts = trial_counts(session, job_id)
    started = any(counts.get(s, 0) for s in TrialStatus if s is not TrialStatus.QUEUED)
    if job.status is JobStatus.QUEUED and started:
        job.status = JobStatus.RUNNING
        job.started_at = job.started_at or func.now()
    if job.status is JobStatus.RUNNING and _all_finished(job, counts):
        job.status = JobStatus.SUCCEEDED if counts.get(TrialStatus.SUCCEEDED, 0) else JobStatus.FAILED
    _set_finished_if_done(session, job)


def trial_counts(session: Session, job_id: int) -> dict[str, int]:
    return _trial_counts_of(session, [job_id])[job_id]


def _all_finished(job: Job, counts: dict[str, int]) -> bool:
    """No trial will run again, and no more will be created: a tpe or cmaes job creates its trials
    one point at a time, up to `trials_target` (a cancelled job asks for no more)."""
    if any(counts.get(s, 0) for s in ACTIVE):
        return False
    if job.status is JobStatus.CANCELLED:
        return True
    created = sum(counts.values())
    return created > 0 and (job.trials_target is None or created >= job.trials_target)


def _set_finished_if_done(session: Session, job: Job) -> None:
    counts = trial_counts(session, job.id)
    if job.finished_at is None and _all_finished(job, counts):
        job.finished_at = func.now()


def job_eta_seconds(session: Session, job: Job) -> float | None:
    """Seconds until the job's unfinished trials end, from the epoch times measured so far: each
    unfinished trial's epochs left (at its own mean epoch time, or the job's before it has one)
    and its test (ml.eta.remaining_seconds), shared by the trials running now. None until an
    epoch of the job is done; 0 once no trial is left to run."""
    active = [t for t in job.trials if t.status in ACTIVE]
    if not active:
        return 0.0
    means = dict(
        session.execute(
            select(EpochMetric.trial_id, func.avg(EpochMetric.seconds))
            .join(Trial, Trial.id == EpochMetric.trial_id)
            .where(Trial.job_id == job.id)
            .group_by(EpochMetric.trial_id)
        ).all()
    )
    if not means:
        return None
    overall = sum(means.values()) / len(means)
    data = DataConfig.model_validate(job.spec.get("data", {}))
    work = sum(
        remaining_seconds(
            TrainConfig.model_validate(t.config),
            data,
            t.epochs - t.epochs_done,
            float(means.get(t.id, overall)),
            tested=data.test == "all",
        )
        for t in active
    )
    running = sum(t.status == TrialStatus.RUNNING for t in active)
    return work / max(running, 1)
