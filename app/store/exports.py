"""A job's trials and curves as tables (CSV exports): header and rows, plain values only."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.store.jobs import get_job, job_history
from app.store.tables import EpochMetric, Trial

TRIAL_COLUMNS = ("trial_id", "index", "status")
TRIAL_TAIL = ("epochs_done", "best_val_accuracy", "test_accuracy", "attempts", "preemptions", "seconds")
EPOCH_COLUMNS = ("trial_id", "index", "epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
                 "lr", "seconds", "images_per_second", "attempt")  # fmt: skip

Table = tuple[list[str], list[list[Any]]]


def trials_table(session: Session, job_id: int) -> Table:
    """One row per trial: id, index, status, one column per swept parameter (the union of the
    trials' params, sorted; none of them is named like a fixed column), epochs done, best
    validation and test accuracy, attempts, preemptions and the seconds its epochs took."""
    job = get_job(session, job_id)
    seconds = dict(
        session.execute(
            select(EpochMetric.trial_id, func.sum(EpochMetric.seconds))
            .join(Trial, Trial.id == EpochMetric.trial_id)
            .where(Trial.job_id == job_id)
            .group_by(EpochMetric.trial_id)
        ).all()
    )
    params = sorted({key for trial in job.trials for key in trial.params})
    rows = [
        [trial.id, trial.index, trial.status.value]
        + [_plain(trial.params.get(key)) for key in params]
        + [
            trial.epochs_done,
            trial.val_accuracy,
            trial.test_accuracy,
            trial.attempts,
            trial.preemptions,
            round(seconds.get(trial.id) or 0.0, 3),
        ]
        for trial in job.trials
    ]
    return [*TRIAL_COLUMNS, *params, *TRIAL_TAIL], rows


def history_table(session: Session, job_id: int) -> Table:
    """One row per trial and completed epoch, in trial index then epoch order."""
    index = {t.id: t.index for t in get_job(session, job_id).trials}
    rows = [
        [trial_id, index[trial_id], *(getattr(row, c) for c in EPOCH_COLUMNS[2:])]
        for trial_id, epochs in job_history(session, job_id).items()
        for row in epochs
    ]
    return list(EPOCH_COLUMNS), rows


def _plain(value: Any) -> Any:
    """A cell: nested values (an augment dict) as JSON text."""
    return json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else value
