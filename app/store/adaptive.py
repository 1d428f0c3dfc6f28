"""The store's side of adaptive search (tpe, cmaes): a job's next point is asked when a worker
can take a trial, so every new point sees every result so far (`ml.adaptive` asks Optuna).

Two workers must never create the same point, and a job never exceeds `trials_target`: the
job's row is locked first (`lock_job`; on SQLite every transaction here is BEGIN IMMEDIATE),
and what it holds is counted again under the lock before the sampler is asked.
"""

from __future__ import annotations

from collections import defaultdict

from sqlalchemy import ColumnElement, exists, func, select
from sqlalchemy.orm import Session

from app.store.jobs import lock_job, new_trials
from app.store.tables import EpochMetric, Job, Trial
from ml.adaptive import Observation, State, suggest
from ml.job import JobSpec
from ml.search import repeats_of
from ml.stats import mean_and_std
from ml.status import JobStatus, TrialStatus


def wants_a_point(job: type[Job] = Job) -> ColumnElement[bool]:
    """An active adaptive job that has created fewer trials than its target and has none queued
    (its queued repeats are taken first)."""
    created = select(func.count()).where(Trial.job_id == job.id).scalar_subquery()
    queued = exists().where(Trial.job_id == job.id, Trial.status == TrialStatus.QUEUED)
    return (
        job.trials_target.is_not(None)
        & job.status.in_((JobStatus.QUEUED, JobStatus.RUNNING))
        & (created < job.trials_target)
        & ~queued
    )


def ask_next_point(session: Session, job_id: int) -> list[Trial]:
    """Create the job's next point (its repeats) if it still wants one; returns the new trials."""
    job = lock_job(session, job_id)
    if job is None or session.scalar(select(wants_a_point()).where(Job.id == job_id)) is not True:
        return []  # another worker asked first, or the job was cancelled meanwhile
    spec = JobSpec.model_validate(job.spec)
    params = suggest(spec.search, job_observations(session, job_id))
    last = session.scalar(select(func.max(Trial.index)).where(Trial.job_id == job_id))
    point = session.scalar(select(func.max(Trial.point)).where(Trial.job_id == job_id))
    first_index = -1 if last is None else last
    number = 0 if point is None else point + 1
    trials = new_trials(
        repeats_of(number, first_index + 1, params, spec.train, spec.search.repeats), spec.max_attempts
    )
    for trial in trials:
        trial.job_id = job_id
    session.add_all(trials)
    session.flush()
    return trials


def job_observations(session: Session, job_id: int) -> list[Observation]:
    """The job's points as the sampler sees them: repeats averaged, curves of the pruned."""
    trials = list(
        session.scalars(select(Trial).where(Trial.job_id == job_id).order_by(Trial.point, Trial.index))
    )
    curves = _curves(session, job_id)
    by_point: dict[int, list[Trial]] = defaultdict(list)
    for trial in trials:
        by_point[trial.point].append(trial)
    return [_observation(runs, curves) for runs in by_point.values()]


def _observation(runs: list[Trial], curves: dict[int, list[float]]) -> Observation:
    state = point_state(runs)
    finished = [
        t.val_accuracy for t in runs if t.status is TrialStatus.SUCCEEDED and t.val_accuracy is not None
    ]
    value = mean_and_std(finished)[0] if state == "complete" and finished else None
    pruned = [curves.get(t.id, []) for t in runs if t.status is TrialStatus.PRUNED]
    attrs = {
        "trial_ids": [t.id for t in runs],
        "test_accuracy": [t.test_accuracy for t in runs],
    }
    return Observation(
        runs[0].params, state, value, pruned[0] if pruned else curves.get(runs[0].id, []), attrs
    )


def point_state(runs: list[Trial]) -> State:
    """One state for a point's repeats: running while any may still run; complete once one
    succeeded; pruned when early stopping ended one; failed otherwise (failed or cancelled)."""
    statuses = {t.status for t in runs}
    if statuses & {TrialStatus.QUEUED, TrialStatus.RUNNING}:
        return "running"
    if TrialStatus.SUCCEEDED in statuses:
        return "complete"
    if TrialStatus.PRUNED in statuses:
        return "pruned"
    return "failed"


def _curves(session: Session, job_id: int) -> dict[int, list[float]]:
    rows = session.execute(
        select(EpochMetric.trial_id, EpochMetric.val_accuracy)
        .join(Trial, Trial.id == EpochMetric.trial_id)
        .where(Trial.job_id == job_id)
        .order_by(EpochMetric.trial_id, EpochMetric.epoch)
    )
    curves: dict[int, list[float]] = defaultdict(list)
    for trial_id, accuracy in rows:
        curves[trial_id].append(accuracy)
    return curves
