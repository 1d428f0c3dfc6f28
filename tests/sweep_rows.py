"""A tiny sweep's rows as workers would leave them (job, trials, epoch_metrics), with no training.

For the dashboard, the CLI client and the metrics: they only read these rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.store.db import transaction
from app.store.jobs import refresh_job_status, submit_job
from app.store.tables import EpochMetric, Job, Trial
from ml.job import JobSpec

EPOCHS = 4


@dataclass(frozen=True)
class Sweep:
    job_id: int
    trial_ids: list[int]  # in index order
    best_trial_id: int
    pruned_trial_id: int
    epochs_written: int  # epoch_metrics rows in all


def curve(index: int, epochs: int) -> list[dict[str, Any]]:
    """Rising accuracy and falling loss, a different level per trial, so curves do not overlap."""
    rows = []
    for epoch in range(1, epochs + 1):
        rows.append(
            {
                "epoch": epoch,
                "train_loss": 2.3 / (epoch + index * 0.5),
                "train_accuracy": min(0.2 + 0.1 * epoch + 0.05 * index, 1.0),
                "val_loss": 2.2 / (epoch + index * 0.4),
                "val_accuracy": min(0.15 + 0.12 * epoch + 0.04 * index, 1.0),
                "lr": 0.1 / epoch,
                "seconds": 10.0 + index,
                "images_per_second": 800.0 + 100 * index,
                "attempt": 1,
            }
        )
    return rows


def write_sweep(factory: sessionmaker[Session], n_trials: int = 4, name: str = "lr sweep") -> Sweep:
    """A finished grid over lr: trial 0 pruned after 2 epochs, the others succeeded (the last is best)."""
    spec = JobSpec.model_validate(
        {
            "name": name,
            "search": {"space": {"lr": [round(0.05 * (i + 1), 2) for i in range(n_trials)]}},
            "train": {"epochs": EPOCHS},
            "early_stopping": {"strategy": "median", "min_epochs": 1},
        }
    )
    with transaction(factory) as session:
        job, _ = submit_job(session, spec)
        written = sum(_finish(session, trial) for trial in job.trials)
        session.flush()
        refresh_job_status(session, job.id)
        ids = [t.id for t in job.trials]
    return Sweep(job.id, ids, best_trial_id=ids[-1], pruned_trial_id=ids[0], epochs_written=written)


def _finish(session: Session, trial: Trial) -> int:
    pruned = trial.index == 0
    rows = curve(trial.index, 2 if pruned else trial.epochs)
    session.add_all(EpochMetric(trial_id=trial.id, **row) for row in rows)
    best = max(rows, key=lambda r: r["val_accuracy"])
    trial.status = "pruned" if pruned else "succeeded"
    trial.epochs_done, trial.attempts = len(rows), 1
    trial.val_accuracy, trial.best_epoch = best["val_accuracy"], best["epoch"]
    trial.test_accuracy = best["val_accuracy"] - 0.01
    trial.train_loss = rows[-1]["train_loss"]
    trial.started_at = trial.finished_at = func.now()
    return len(rows)


def start_trial(factory: sessionmaker[Session], n_trials: int = 2, epochs: int = 3) -> tuple[int, list[int]]:
    """A queued job of `n_trials` trials; returns (job id, trial ids)."""
    spec = JobSpec.model_validate(
        {"name": "live", "search": {"space": {"seed": list(range(n_trials))}}, "train": {"epochs": epochs}}
    )
    with transaction(factory) as session:
        job, _ = submit_job(session, spec)
        return job.id, [t.id for t in job.trials]


def advance(factory: sessionmaker[Session], trial_id: int, epochs_done: int, finished: bool = False) -> None:
    """What a worker writes after each epoch: the history row, the trial's progress, the job's status."""
    with transaction(factory) as session:
        trial = session.get(Trial, trial_id)
        assert trial is not None
        row = curve(trial.index, epochs_done)[-1]
        session.add(EpochMetric(trial_id=trial_id, **row))
        trial.status = "succeeded" if finished else "running"
        trial.epochs_done, trial.attempts, trial.train_loss = epochs_done, 1, row["train_loss"]
        if trial.val_accuracy is None or row["val_accuracy"] > trial.val_accuracy:
            trial.val_accuracy, trial.best_epoch = row["val_accuracy"], epochs_done
        trial.started_at = trial.started_at or func.now()
        if finished:
            trial.finished_at = func.now()
        session.flush()
        refresh_job_status(session, trial.job_id)


def job_status(factory: sessionmaker[Session], job_id: int) -> str:
    with factory() as session:
        return session.scalar(select(Job.status).where(Job.id == job_id)) or "missing"
