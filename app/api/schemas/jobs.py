"""Bodies the jobs routes answer with. The request body of POST /jobs is `ml.config.JobSpec`."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AliasPath, BaseModel, ConfigDict, Field

from app.errors import redact_paths
from app.store.points import Point
from app.store.tables import Job, Trial
from ml.status import JobStatus, TrialStatus

# ml.status's enums, spelled as literals so the OpenAPI document lists the values in place.
JobStatusValue = Literal[tuple(JobStatus)]  # type: ignore[valid-type]
TrialStatusValue = Literal[tuple(TrialStatus)]  # type: ignore[valid-type]


def _as_utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes of CURRENT_TIMESTAMP, which is UTC; PostgreSQL aware ones.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _public_error(value: str | None) -> str | None:
    return None if value is None else redact_paths(value)


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


Interval = Annotated[
    tuple[float, float],
    Field(description="95 % interval [low, high] (Wilson, from the number of images it was measured on)"),
]


class TrialOut(OrmSchema):
    id: int
    index: int = Field(description="position in the job, from 0")
    point: int = Field(description="the point of the space it runs; the repeats of a point share it")
    params: dict[str, Any] = Field(description="the swept train fields of this trial")
    status: TrialStatusValue
    epoch: int = Field(validation_alias="epochs_done", description="completed epochs")
    epochs: int
    val_accuracy: Fraction | None = Field(description="best validation accuracy so far")
    test_accuracy: Fraction | None = Field(description="test accuracy at the best epoch")
    val_interval: Interval | None
    test_interval: Interval | None
    tied_with_best: bool = Field(
        False, description="its point's validation interval overlaps the best point's: not distinguishable"
    )
    train_loss: float | None = Field(description="the last epoch's")
    attempts: int = Field(description="times a worker claimed it")
    pauses: int = Field(
        description="claims that ended with an ASHA pause at a rung, waiting for the other trials "
        "(they do not count against max_attempts)"
    )
    preemptions: int = Field(
        description="claims that ended because the worker was stopped (SIGTERM); not failed attempts"
    )
    extensions: int = Field(description="times a user extended it to more epochs")
    error: Annotated[str | None, AfterValidator(_public_error)] = Field(
        description="why the last attempt failed (filesystem paths cut to their file name)"
    )
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None
    archived_at: UtcDatetime | None = Field(description="when retention deleted its checkpoints")


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
    plan: dict[str, Any] | None = Field(
        None,
        validation_alias=AliasPath("environment", "plan"),
        description="with train.time_budget_s: the measured speed and the planned epochs, epoch_images "
        "and batch_size (ml.plan.Plan); null without a budget or before the trial has planned",
    )


class PointOut(BaseModel):
    point: int
    params: dict[str, Any]
    trial_ids: list[int] = Field(description="its repeats (one per train.seed), in index order")
    succeeded: int = Field(description="repeats that trained to the end")
    val_mean: Fraction | None = Field(description="mean validation accuracy of its repeats")
    val_std: float | None = Field(description="standard deviation over repeats; null with fewer than 2")
    test_mean: Fraction | None
    test_std: float | None
    val_interval: Interval | None = Field(
        description="95 %: the Wilson half-width and the repeats' standard error, in quadrature"
    )
    tied_with_best: bool


class BestTrial(BaseModel):
    trial_id: int
    point: int = Field(
        description="the best point (highest mean validation accuracy); this is its best repeat"
    )
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
    progress: dict[str, int | float | None] = Field(  # type: ignore[assignment]
        description="trials per status (every status present) and eta_seconds: the job's time left, "
        "from measured epoch times and the evaluations left; null until an epoch is done"
    )
    spec: dict[str, Any] = Field(description="the normalised JobSpec, defaults filled in")
    best: BestTrial | None = Field(
        description="the best repeat of the point with the highest mean val_accuracy, if any"
    )
    points: list[PointOut] = Field(
        description="the trials grouped by point of the space, with mean and spread"
    )
    trials: list[TrialOut]
    disk_bytes: int | None = Field(
        None, description="bytes of the job's checkpoints in the artifact store (GET /jobs/{id} only)"
    )


class JobPage(BaseModel):
    items: list[JobSummary] = Field(description="newest first")
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null on the last")


def progress(counts: dict[str, int]) -> dict[str, int]:
    """Counts per trial status with the absent statuses as 0, so clients need no defaults."""
    return {status: counts.get(status, 0) for status in TrialStatus}


def job_summary(job: Job, counts: dict[str, int], best_val_accuracy: float | None) -> JobSummary:
    return JobSummary.model_validate(
        {**_columns(job), "progress": progress(counts), "best_val_accuracy": best_val_accuracy}
    )


def job_out(
    job: Job,
    counts: dict[str, int],
    points: Sequence[Point],
    best: Trial | None,
    model_id: int | None,
    eta_seconds: float | None = None,
) -> JobOut:
    tied = {t.id for p in points if p.tied_with_best for t in p.trials}
    return JobOut.model_validate(
        {
            **_columns(job),
            "progress": {**progress(counts), "eta_seconds": eta_seconds},
            "best_val_accuracy": None if best is None else best.val_accuracy,
            "spec": job.spec,
            "best": None if best is None else _best(best, model_id),
            "points": [_point(p) for p in points],
            "trials": [
                TrialOut.model_validate(t).model_copy(update={"tied_with_best": t.id in tied})
                for t in job.trials
            ],
        }
    )


def _point(point: Point) -> PointOut:
    return PointOut(
        point=point.point,
        params=point.params,
        trial_ids=[t.id for t in point.trials],
        succeeded=point.finished,
        val_mean=point.val_mean,
        val_std=point.val_std,
        test_mean=point.test_mean,
        test_std=point.test_std,
        val_interval=point.val_interval,
        tied_with_best=point.tied_with_best,
    )


def _columns(job: Job) -> dict[str, Any]:
    fields = ("id", "name", "status", "created_at", "started_at", "finished_at")
    return {name: getattr(job, name) for name in fields}


def _best(trial: Trial, model_id: int | None) -> BestTrial:
    return BestTrial(
        trial_id=trial.id,
        point=trial.point,
        params=trial.params,
        val_accuracy=trial.val_accuracy,  # type: ignore[arg-type]  # best_trial_of skips None
        test_accuracy=trial.test_accuracy,
        epoch=trial.best_epoch,
        model_id=model_id,
    )
