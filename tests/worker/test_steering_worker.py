"""Steering a job with real workers: a finished sweep's best trial extended to more epochs, a failed
trial retried from its checkpoint, an added point trained, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.settings import Settings
from app.store.artifacts import LocalStore
from app.store.db import transaction
from app.store.jobs import submit_job
from app.store.steering import add_trials, extend_trials, retry_trial
from app.store.tables import Job, RegisteredModel, Trial
from tests.workers import epoch_rows, tiny_spec, trial_row, worker_thread

pytestmark = pytest.mark.slow


def _train(settings: Settings, trials: int) -> None:
    thread, errors = worker_thread(settings, max_trials=trials)
    thread.join()
    assert errors == []


def _job(factory: sessionmaker[Session], job_id: int) -> Job:
    with factory() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


@pytest.mark.usefixtures("one_thread")
def test_extend_the_best_of_two_one_epoch_trials_to_three_epochs(
    factory: sessionmaker[Session], worker_settings: Callable[..., Settings], data_dir: Path
) -> None:
    settings = worker_settings(data_dir=data_dir)
    with transaction(factory) as session:
        job, _ = submit_job(
            session, tiny_spec(1, seeds=(0, 1), data={"val_size": 40, "train_limit": 120}, retention=None)
        )
        job_id, trial_ids = job.id, [t.id for t in job.trials]
    _train(settings, 2)
    assert _job(factory, job_id).status == "succeeded"
    with factory() as session:
        models = {m.trial_id: (m.id, m.path) for m in session.scalars(select(RegisteredModel))}
    with transaction(factory) as session:
        [extended] = extend_trials(session, job_id, 3, LocalStore(settings.artifacts_dir), top_k=1)
        best_id = extended.id
    other_id = next(i for i in trial_ids if i != best_id)
    job = _job(factory, job_id)
    assert (job.status, job.finished_at) == ("running", None)
    best_before = max(trial_row(factory, i).val_accuracy or 0 for i in trial_ids)
    assert trial_row(factory, best_id).val_accuracy == best_before  # top_k took the best
    with factory() as session:  # the model still serves while the trial trains on
        path = session.scalar(select(RegisteredModel.path).where(RegisteredModel.trial_id == best_id))
    assert path is not None and (settings.artifacts_dir / path).is_file()

    _train(settings, 1)
    best, other = trial_row(factory, best_id), trial_row(factory, other_id)
    assert (best.status, best.epochs_done, best.epochs, best.extensions) == ("succeeded", 3, 3, 1), best.error
    assert best.config["epochs"] == 3
    assert [r.epoch for r in epoch_rows(factory, best_id)] == [1, 2, 3]
    assert [r.epoch for r in epoch_rows(factory, other_id)] == [1]
    assert [r.attempt for r in epoch_rows(factory, best_id)] == [1, 2, 2]
    assert other.status == "succeeded" and other.epochs == 1
    assert _job(factory, job_id).status == "succeeded"
    with factory() as session:
        model = session.scalar(select(RegisteredModel).where(RegisteredModel.trial_id == best_id))
    assert model is not None and model.id == models[best_id][0]  # the same model, updated in place
    assert (model.epoch, model.val_accuracy) == (best.best_epoch, best.val_accuracy)
    assert (settings.artifacts_dir / model.path).is_file()


@pytest.mark.usefixtures("one_thread")
def test_a_failed_trial_is_retried_and_an_added_point_is_trained(
    factory: sessionmaker[Session], worker_settings: Callable[..., Settings], data_dir: Path
) -> None:
    with transaction(factory) as session:
        job, _ = submit_job(session, tiny_spec(1, max_attempts=1, data={"val_size": 40, "train_limit": 120}))
        job_id, [trial_id] = job.id, [t.id for t in job.trials]
    _train(worker_settings(), 1)  # no data set in this data_dir: the only attempt fails
    failed = trial_row(factory, trial_id)
    assert (failed.status, failed.attempts) == ("failed", 1)
    assert _job(factory, job_id).status == "failed"

    with transaction(factory) as session:
        retry_trial(session, job_id, trial_id)
        [added] = add_trials(session, job_id, [{"seed": 7}])
        added_id = added.id
    assert _job(factory, job_id).status == "running"
    _train(worker_settings(data_dir=data_dir), 2)
    retried, new = trial_row(factory, trial_id), trial_row(factory, added_id)
    assert (retried.status, retried.attempts, retried.attempts_forgiven) == ("succeeded", 2, 1), retried.error
    assert (new.status, new.index, new.params, new.config["seed"]) == ("succeeded", 1, {"seed": 7}, 7)
    assert _job(factory, job_id).status == "succeeded"
    with factory() as session:
        assert session.scalar(select(Trial.error).where(Trial.id == trial_id)) is None


@pytest.mark.usefixtures("one_thread")
def test_stop_when_ends_the_job_once_a_trial_reaches_the_goal(
    factory: sessionmaker[Session], worker_settings: Callable[..., Settings], data_dir: Path
) -> None:
    spec = tiny_spec(3, seeds=(0, 1, 2), data={"val_size": 40, "train_limit": 120})
    spec = spec.model_validate(
        {**spec.model_dump(), "stop_when": {"val_accuracy": 0.01}}
    )  # any epoch reaches it
    with transaction(factory) as session:
        job, _ = submit_job(session, spec)
        job_id, trial_ids = job.id, [t.id for t in job.trials]
    _train(worker_settings(data_dir=data_dir), 1)
    first, *others = (trial_row(factory, i) for i in trial_ids)
    assert (first.status, first.epochs_done, first.epochs) == ("succeeded", 1, 3), first.error
    assert first.test_accuracy is not None  # tested on its best epoch like any finished trial
    assert [t.status for t in others] == ["cancelled", "cancelled"]
    job = _job(factory, job_id)
    assert (job.status, job.finished_at is not None) == ("succeeded", True)
