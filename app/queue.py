"""The queue: jobs and trials as rows, claimed atomically, written back under a lease guard.

Submission, cancellation and job-status bookkeeping live here; the claim, heartbeat and
write-back statements used by workers live here too, so every status change has one home.
"""

from __future__ import annotations

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.models import TRIAL_FINISHED, Job, Trial
from ml.config import JobSpec
from ml.search import expand


class NotFound(LookupError):
    """No such row."""


class Conflict(RuntimeError):
    """The request is valid but the row's state forbids it (HTTP 409)."""


class IdempotencyMismatch(ValueError):
    """An Idempotency-Key was reused with a different body (HTTP 422)."""


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
        status="queued",
        spec=spec.model_dump(mode="json"),
        spec_digest=digest,
        idempotency_key=idempotency_key,
        priority=spec.priority,
    )
    job.trials = [
        Trial(
            index=point.index,
            params=point.params,
            config=point.config.model_dump(mode="json"),
            status="queued",
            epochs=point.config.epochs,
            max_attempts=spec.max_attempts,
        )
        for point in expand(spec)
    ]
    session.add(job)
    session.flush()
    return job, True


def get_job(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"job {job_id} does not exist")
    return job


def cancel_job(session: Session, job_id: int) -> Job:
    """Queued trials become cancelled now; running ones are asked to stop at their next boundary."""
    job = get_job(session, job_id)
    if job.status not in ("queued", "running"):
        raise Conflict(f"job {job_id} is already {job.status}; only queued or running jobs can be cancelled")
    session.execute(
        update(Trial)
        .where(Trial.job_id == job_id, Trial.status == "queued")
        .values(status="cancelled", finished_at=func.now())
    )
    session.execute(
        update(Trial).where(Trial.job_id == job_id, Trial.status == "running").values(cancel_requested=True)
    )
    job.status = "cancelled"
    session.flush()
    _set_finished_if_done(session, job)
    return job


def refresh_job_status(session: Session, job_id: int) -> None:
    """Derive a job's status from its trials after a trial transition (same transaction)."""
    job = session.get(Job, job_id, with_for_update=session.bind.dialect.name != "sqlite")  # type: ignore[union-attr]
    if job is None:
        return
    counts = trial_counts(session, job_id)
    started = any(counts.get(s, 0) for s in ("running", *TRIAL_FINISHED))
    if job.status == "queued" and started:
        job.status = "running"
        job.started_at = job.started_at or func.now()
    if job.status == "running" and _all_finished(counts):
        job.status = "succeeded" if counts.get("succeeded", 0) else "failed"
    _set_finished_if_done(session, job)


def trial_counts(session: Session, job_id: int) -> dict[str, int]:
    rows = session.execute(
        select(Trial.status, func.count()).where(Trial.job_id == job_id).group_by(Trial.status)
    )
    return {status: count for status, count in rows}


def _all_finished(counts: dict[str, int]) -> bool:
    return sum(counts.values()) > 0 and all(s in TRIAL_FINISHED for s, n in counts.items() if n)


def _set_finished_if_done(session: Session, job: Job) -> None:
    if job.finished_at is None and _all_finished(trial_counts(session, job.id)):
        job.finished_at = func.now()
