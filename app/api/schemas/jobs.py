"""Bodies the jobs routes answer with. The request body of POST /jobs is `ml.config.JobSpec`."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from app.store.tables import Job, Trial
from ml.status import JobStatus, TrialStatus

# ml.status's enums, spelled as literals so the OpenAPI document lists the values in place.
JobStatusValue = Literal[tuple(JobStatus)]  # type: ignore[valid-type]
TrialStatusValue = Literal[tuple(TrialStatus)]  # type: ignore[valid-type]


def _as_utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes of CURRENT_TIMESTAMP, which is UTC; PostgreSQL aware ones.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]
Fraction = Annotated[float, Field(description="a fraction, 0..1")]

JOB_SPEC_EXAMPLE: dict[str, Any] = {
    "name": "lr x wd",
    "search": {"strategy": "grid", "space": {"lr": [0.001, 0.01, 0.1], "weight_decay": [1e-4, 1e-5, 1e-6]}},
    "train": {
        "arch": "resnet18",
        "pretrained": False,
        "hidden_units": 0,
        "norm": "batch",
        "epochs": 10,
        "batch_size": 128,
        "optimizer": "sgd",
        "lr": 0.1,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "schedule": "onecycle",
        "label_smoothing": 0.0,
        "augment": {"crop": True, "flip": True},
        "seed": 0,
    },
    "data": {"dataset": "cifar10", "val_size": 5000, "train_limit": None},
}


class OrmSchema(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class TrialOut(OrmSchema):
    id: int
    index: int = Field(description="position in the job's search space, from 0")
    params: dict[str, Any] = Field(description="the swept train fields of this trial")
    status: TrialStatusValue
    epoch: int = Field(validation_alias="epochs_done", description="completed epochs")
    epochs: int
    val_accuracy: Fraction | None = Field(description="best validation accuracy so far")
    test_accuracy: Fraction | None = Field(description="test accuracy at the best epoch")
    train_loss: float | None = Field(description="the last epoch's")
    attempts: int = Field(description="times a worker claimed it")
    pauses: int = Field(
        description="claims that ended with an ASHA pause at a rung, waiting for the other trials "
        "(they do not count against max_attempts)"
    )
    error: str | None
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None


class EpochOut(OrmSchema):
    epoch: int
    train_loss: float
    train_accuracy: Fraction
    val_loss: float
    val_accuracy: Fraction
    lr: float = Field(description="learning rate at the end of the epoch")
    seconds: float
    images_per_second: float


class TrialDetail(TrialOut):
    history: list[EpochOut] = Field(description="one row per completed epoch, in order")


class BestTrial(BaseModel):
    trial_id: int
    params: dict[str, Any]
    val_accuracy: Fraction
    test_accuracy: Fraction | None
    epoch: int | None = Field(description="the epoch that reached val_accuracy")
    model_id: int | None = Field(description="the registered checkpoint, once the trial has finished")


class JobSummary(OrmSchema):
    id: int
    name: str
    status: JobStatusValue
    created_at: UtcDatetime
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None
    progress: dict[TrialStatusValue, int] = Field(description="trials per status; every status present")
    best_val_accuracy: Fraction | None = Field(None, description="highest val_accuracy of any trial so far")


class JobOut(JobSummary):
    spec: dict[str, Any] = Field(description="the normalised JobSpec, defaults filled in")
    best: BestTrial | None = Field(description="the trial with the highest val_accuracy, if any")
    trials: list[TrialOut]


class JobPage(BaseModel):
    items: list[JobSummary] = Field(description="newest first")
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null on the last")


def progress(counts: dict[str, int]) -> dict[str, int]:
    """Counts per trial status with the absent statuses as 0, so clients need no defaults."""
    return {status: counts.get(status, 0) for status in TrialStatus}


def best_trial(trials: Sequence[Trial]) -> Trial | None:
    """Highest val_accuracy; on a tie the trial earliest in the search space."""
    scored = [t for t in trials if t.val_accuracy is not None]
    return max(scored, key=lambda t: (t.val_accuracy, -t.index), default=None)


def job_summary(job: Job, counts: dict[str, int], best_val_accuracy: float | None) -> JobSummary:
    return JobSummary.model_validate(
        {**_columns(job), "progress": progress(counts), "best_val_accuracy": best_val_accuracy}
    )


def job_out(job: Job, counts: dict[str, int], best: Trial | None, best_model_id: int | None) -> JobOut:
    return JobOut.model_validate(
        {
            **_columns(job),
            "progress": progress(counts),
            "best_val_accuracy": None if best is None else best.val_accuracy,
            "spec": job.spec,
            "best": None if best is None else _best(best, best_model_id),
            "trials": [TrialOut.model_validate(t) for t in job.trials],
        }
    )


def _columns(job: Job) -> dict[str, Any]:
    fields = ("id", "name", "status", "created_at", "started_at", "finished_at")
    return {name: getattr(job, name) for name in fields}


def _best(trial: Trial, model_id: int | None) -> BestTrial:
    return BestTrial(
        trial_id=trial.id,
        params=trial.params,
        val_accuracy=trial.val_accuracy,  # type: ignore[arg-type]  # best_trial skips None
        test_accuracy=trial.test_accuracy,
        epoch=trial.best_epoch,
        model_id=model_id,
    )
