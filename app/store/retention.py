"""A job's retention policy (`ml.job.RetentionSpec`) applied to its checkpoints, so a sweep's
disk use stops growing with its trials.

After a trial of the job finishes, `plan_retention` (in a transaction, under the job's lock)
looks at its succeeded and pruned trials:

    kept     the top `top_k` by validation accuracy, and any trial whose model is served,
             promoted or aliased (`app.store.registry.retained_model_ids`): best.pt stays;
             last.pt (optimiser and EMA state) is deleted unless `keep_last`
    archived the others: `archived_at` set on the trial and on its model (row and metrics stay;
             `/predict?model_id=` answers 410, it cannot be promoted, it is never served), and
             every file of the trial is deleted

What each action needs, and so what is never deleted:
    /predict  best.pt of the served, promoted or aliased models (and of every kept trial)
    extend    best.pt of a kept trial (with last.pt when `keep_last`: an exact resume; without,
              it continues from the best epoch's weights, see ml.extension); an archived trial
              cannot be extended (409)
    retry     failed and cancelled trials are never touched; nor are queued or running ones

The rows change in the transaction; the files go after it commits (`delete_files`), through the
job's `ArtifactStore`, so a crash in between leaves files no row needs, never a row without its file.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from app.store.artifacts import ArtifactStore, trial_key
from app.store.jobs import lock_job
from app.store.registry import retained_model_ids
from app.store.tables import Checkpoint, RegisteredModel, Trial
from ml.checkpoint_files import LAST
from ml.job import RetentionSpec
from ml.status import TrialStatus

RETAINED_STATUSES = (TrialStatus.SUCCEEDED, TrialStatus.PRUNED)
MODEL_COPY_PREFIX = "model-"  # a served model's best.pt kept aside while its trial is extended


@dataclass
class Deletions:
    """Files to delete once the transaction that decided it has committed."""

    keys: list[str] = field(default_factory=list)
    prefixes: list[str] = field(default_factory=list)  # whole trial folders
    archived_trials: list[int] = field(default_factory=list)


def plan_retention(session: Session, job_id: int, store: ArtifactStore) -> Deletions:
    """Apply the job's policy to its rows and return the files to delete after the commit."""
    job = lock_job(session, job_id)
    if job is None:
        return Deletions()
    policy = RetentionSpec.model_validate(job.spec.get("retention", {}))  # older specs: the default
    finished = [t for t in job.trials if t.status in RETAINED_STATUSES and t.archived_at is None]
    models = {
        m.trial_id: m
        for m in session.scalars(select(RegisteredModel).where(RegisteredModel.job_id == job_id))
    }
    keep = _kept(finished, policy, models, retained_model_ids(session))
    deletions = Deletions()
    for trial in finished:
        prefix = trial_key(job_id, trial.id)
        model = models.get(trial.id)
        if trial.id not in keep:
            trial.archived_at = func.now()
            if model is not None:
                model.archived_at = func.now()
            deletions.prefixes.append(prefix)
            deletions.archived_trials.append(trial.id)
            session.execute(
                delete(Checkpoint).where(Checkpoint.trial_id == trial.id)
            )  # object storage's names
            continue
        if not policy.keep_last:  # object storage: no row may name a deleted last.pt
            session.execute(
                delete(Checkpoint).where(Checkpoint.trial_id == trial.id, Checkpoint.name == "last")
            )
        for key in store.keys(prefix):
            name = key.rsplit("/", 1)[-1]
            stale_copy = name.startswith(MODEL_COPY_PREFIX) and (model is None or key != model.path)
            if (name == LAST and not policy.keep_last) or stale_copy:
                deletions.keys.append(key)
    session.flush()
    return deletions


def _kept(
    finished: list[Trial], policy: RetentionSpec, models: dict[int, RegisteredModel], retained: set[int]
) -> set[int]:
    ranked = sorted(
        (t for t in finished if t.val_accuracy is not None), key=lambda t: (-(t.val_accuracy or 0.0), t.index)
    )
    top = ranked if policy.top_k is None else ranked[: policy.top_k]
    keep = {t.id for t in top} | {t.id for t in finished if t.val_accuracy is None}  # nothing to rank it by
    return keep | {trial_id for trial_id, model in models.items() if model.id in retained}


def delete_files(store: ArtifactStore, deletions: Deletions) -> None:
    """Delete what `plan_retention` decided, after its transaction committed."""
    if deletions.keys:
        store.delete(deletions.keys)
    for prefix in deletions.prefixes:
        store.delete_prefix(prefix)
