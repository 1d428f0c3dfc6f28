"""max_concurrent_trials in the claim statement, on SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from app.store.claims import Claim, Outcome, claim_trial, finish_trial
from app.store.db import transaction
from app.store.jobs import submit_job
from ml.job import JobSpec


def _job(factory: sessionmaker[Session], trials: int, limit: int | None) -> int:
    spec = JobSpec.model_validate(
        {
            "search": {"space": {"seed": list(range(trials))}},
            "train": {"epochs": 1},
            "max_concurrent_trials": limit,
        }
    )
    with transaction(factory) as session:
        job, _ = submit_job(session, spec)
        return job.id


def _claim(factory: sessionmaker[Session], worker: str) -> Claim | None:
    with transaction(factory) as session:
        return claim_trial(session, worker, 60.0)


def test_a_job_never_runs_more_trials_at_once_than_its_limit(factory: sessionmaker[Session]) -> None:
    limited = _job(factory, 3, limit=2)
    other = _job(factory, 1, limit=None)
    first, second = _claim(factory, "w1"), _claim(factory, "w2")
    assert first is not None and second is not None and {first.job_id, second.job_id} == {limited}
    third = _claim(factory, "w3")  # the limited job is full: the next job's trial instead
    assert third is not None and third.job_id == other
    assert _claim(factory, "w4") is None
    history = [{"epoch": 1, "train_loss": 1.0, "train_accuracy": 0.5, "val_loss": 1.0, "val_accuracy": 0.5,
                "lr": 0.1, "seconds": 1.0, "images_per_second": 1.0}]  # fmt: skip
    with transaction(factory) as session:
        finish_trial(session, first, Outcome("pruned", history, 0.5, None, None))
    fourth = _claim(factory, "w4")  # room again
    assert fourth is not None and fourth.job_id == limited and fourth.attempt == 1
