"""A user steering a job after submission: extend trials to more epochs, add points, retry a trial.

Each moves trials back to `queued` (the transitions `ml.status.TRIAL_TRANSITIONS` lists for a
user) and re-opens the job: `running` again (or `queued` if it never started), `finished_at`
cleared. A re-queued trial gets a fresh attempt budget (`attempts_forgiven`); its attempts go
on counting, so its next attempt resumes from the newest attempt's checkpoint
(`app.store.artifacts.start_attempt`) and history continues at epoch + 1.

    extend  succeeded/pruned -> queued, config epochs raised (the trainer re-lays the schedule,
            ml.extension); early stopping no longer applies to it. Needs its last.pt.
    retry   failed/cancelled -> queued, from its last checkpoint if it has one.
    add     new queued trials in the same job, validated like its space; a point that is
            already a trial (same config) is a 409.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.errors import Conflict, NotFound, Unprocessable
from app.store.artifacts import ArtifactStore, keep_model_file, resume_point, trial_dir
from app.store.checkpoints import checkpoint_blobs
from app.store.claims import check_transition
from app.store.jobs import lock_job, new_trials
from app.store.tables import Job, RegisteredModel, Trial
from ml.config import MAX_TRIALS, TrainConfig
from ml.job import JobSpec
from ml.search import TrialPoint, added_point
from ml.status import JobStatus, TrialStatus

EXTENDABLE = (TrialStatus.SUCCEEDED, TrialStatus.PRUNED)
RETRYABLE = (TrialStatus.FAILED, TrialStatus.CANCELLED)


def extend_trials(
    session: Session,
    job_id: int,
    epochs: int,
    store: ArtifactStore,
    *,
    top_k: int | None = None,
    trial_ids: Sequence[int] | None = None,
) -> list[Trial]:
    """Train the job's `top_k` best finished trials (by validation accuracy), or `trial_ids`, on
    to `epochs` in all, from their checkpoints. Returns the trials re-queued."""
    job = _lock_job(session, job_id)
    trials = _chosen(job, top_k, trial_ids)
    for trial in trials:
        _check_extendable(session, trial, epochs, store)
    for trial in trials:
        model = session.scalar(select(RegisteredModel).where(RegisteredModel.trial_id == trial.id))
        if model is not None and model.archived_at is None and store.local:
            # The continued trial supersedes (deletes) its attempt folders; the model keeps serving.
            # (Object storage never overwrites a key, and workers never delete a model's.)
            model.path = keep_model_file(store.work_root, model.path)
        trial.config = {**trial.config, "epochs": epochs}
        trial.epochs = epochs
        trial.extensions += 1
        _requeue(trial)
    _reopen(job)
    session.flush()
    return trials


def _chosen(job: Job, top_k: int | None, trial_ids: Sequence[int] | None) -> list[Trial]:
    if (top_k is None) == (trial_ids is None):
        raise Unprocessable("give either top_k or trial_ids")
    if trial_ids is not None:
        by_id = {t.id: t for t in job.trials}
        missing = sorted(set(trial_ids) - set(by_id))
        if missing:
            raise Unprocessable(f"trial(s) {missing} are not in job {job.id}")
        return [by_id[i] for i in dict.fromkeys(trial_ids)]
    finished = [t for t in job.trials if t.status in EXTENDABLE and t.val_accuracy is not None]
    if not finished:
        raise Conflict(f"job {job.id} has no succeeded or pruned trial to extend")
    return sorted(finished, key=lambda t: (-(t.val_accuracy or 0.0), t.index))[:top_k]


def _check_extendable(session: Session, trial: Trial, epochs: int, store: ArtifactStore) -> None:
    if trial.status not in EXTENDABLE:
        raise Conflict(f"trial {trial.id} is {trial.status}; only succeeded or pruned trials can be extended")
    if epochs <= trial.epochs_done:
        raise Conflict(f"trial {trial.id} has trained {trial.epochs_done} epochs; extend it to more")
    try:
        TrainConfig.model_validate({**trial.config, "epochs": epochs})
    except ValidationError as exc:
        raise Unprocessable(f"epochs {epochs}: {exc.errors()[0]['msg']}") from None
    if trial.archived_at is not None or not _can_continue(session, trial, store):
        raise Conflict(
            f"trial {trial.id} has no checkpoint left to continue from (the job's retention policy "
            "deleted it); add its point again as a new trial instead"
        )


def _can_continue(session: Session, trial: Trial, store: ArtifactStore) -> bool:
    """Whether the trial has a last.pt, or (retention deleted that) a best.pt, to continue from:
    in its attempt folders, or named in `checkpoints` (object storage)."""
    if store.local:
        return resume_point(trial_dir(store.work_root, trial.job_id, trial.id)) is not None
    return bool({"last", "best"} & set(checkpoint_blobs(session, trial.id)))


def retry_trial(session: Session, job_id: int, trial_id: int) -> Trial:
    """Queue a failed or cancelled trial again, with a fresh attempt budget."""
    job = _lock_job(session, job_id)
    trial = next((t for t in job.trials if t.id == trial_id), None)
    if trial is None:
        raise NotFound(f"trial {trial_id} is not in job {job_id}")
    if trial.status not in RETRYABLE:
        raise Conflict(f"trial {trial_id} is {trial.status}; only failed or cancelled trials can be retried")
    _requeue(trial)
    _reopen(job)
    session.flush()
    return trial


def add_trials(session: Session, job_id: int, points: Sequence[dict[str, Any]]) -> list[Trial]:
    """Queue the trials of each point in the job (its `search.repeats` of them); returns them.
    422 for an invalid point, 409 for one whose config is already a trial of the job (or given twice)."""
    job = _lock_job(session, job_id)
    spec = JobSpec.model_validate(job.spec)
    seen = {_key(t.config): f"trial {t.id} (index {t.index})" for t in job.trials}
    next_point = max((t.point for t in job.trials), default=-1) + 1
    next_index = max((t.index for t in job.trials), default=-1) + 1
    new: list[TrialPoint] = []
    for n, params in enumerate(points):
        try:
            trials = added_point(spec.search, spec.train, params, next_point + n, next_index + len(new))
        except ValueError as exc:
            raise Unprocessable(f"points[{n}]: {exc}") from None
        for trial in trials:
            key = _key(trial.config.model_dump(mode="json"))
            if key in seen:
                raise Conflict(f"points[{n}] {params} is the same config as {seen[key]} of job {job_id}")
            seen[key] = f"points[{n}]"
        new += trials
    if len(job.trials) + len(new) > MAX_TRIALS:
        raise Unprocessable(
            f"job {job_id} would have {len(job.trials) + len(new)} trials; at most {MAX_TRIALS}"
        )
    added = new_trials(new, spec.max_attempts)
    job.trials.extend(added)
    _reopen(job)
    session.flush()
    return added


def _key(config: dict[str, Any]) -> str:
    return repr(sorted(config.items()))


def _lock_job(session: Session, job_id: int) -> Job:
    """The job, locked (see `lock_job`): steering requests on one job take turns, and a
    cancellation cannot interleave."""
    job = lock_job(session, job_id)
    if job is None:
        raise NotFound(f"job {job_id} does not exist")
    if job.status is JobStatus.CANCELLED and job.finished_at is None:
        raise Conflict(f"job {job_id} is still stopping after its cancellation; retry shortly")
    return job


def _requeue(trial: Trial) -> None:
    check_transition(trial.status, TrialStatus.QUEUED)
    trial.status = TrialStatus.QUEUED
    trial.attempts_forgiven = trial.attempts - trial.pauses - trial.preemptions  # a fresh budget
    trial.worker_id = None
    trial.lease_expires_at = None
    trial.cancel_requested = False
    trial.error = None
    trial.finished_at = None


def _reopen(job: Job) -> None:
    job.status = JobStatus.RUNNING if job.started_at is not None else JobStatus.QUEUED
    job.finished_at = None
