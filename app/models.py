"""Database tables. The database is the source of truth for every job, trial and model.

Job status:
    queued     no trial has been claimed yet
    running    at least one trial claimed, not all trials finished
    succeeded  every trial finished and at least one succeeded
    failed     every trial finished and none succeeded
    cancelled  cancelled by a user; queued trials were cancelled, running ones stop at a boundary

Trial status (allowed transitions in `TRIAL_TRANSITIONS`):
    queued     waiting for a worker; also a trial paused at an ASHA rung (`pauses` > 0), which
               resumes from its last.pt once the job's other trials have reached that rung
    running    claimed by `worker_id` for attempt `attempts`, lease until `lease_expires_at`
    succeeded  trained all epochs
    failed     raised, or lost its lease, `max_attempts` times; `error` says why
    pruned     stopped early by the job's early-stopping rule; keeps curve and checkpoint
    cancelled  cancelled by a user
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
TRIAL_STATUSES = ("queued", "running", "succeeded", "failed", "pruned", "cancelled")
TRIAL_FINISHED = ("succeeded", "failed", "pruned", "cancelled")
TRIAL_TRANSITIONS: dict[str, tuple[str, ...]] = {
    "queued": ("running", "cancelled"),
    "running": ("running", "queued", "succeeded", "failed", "pruned", "cancelled"),
    "succeeded": (),
    "failed": (),
    "pruned": (),
    "cancelled": (),
}


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, datetime: DateTime(timezone=True)}


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    spec: Mapped[dict[str, Any]]  # the normalised JobSpec, exactly as validated
    spec_digest: Mapped[str] = mapped_column(String(64))
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]

    trials: Mapped[list[Trial]] = relationship(
        back_populates="job", order_by="Trial.index", cascade="all, delete-orphan", passive_deletes=True
    )


class Trial(Base):
    __tablename__ = "trials"
    __table_args__ = (UniqueConstraint("job_id", "index"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    index: Mapped[int]
    params: Mapped[dict[str, Any]]  # only the swept keys
    config: Mapped[dict[str, Any]]  # the full TrainConfig this trial trains with
    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    epoch: Mapped[int] = mapped_column(default=0)  # completed epochs
    epochs: Mapped[int]
    val_accuracy: Mapped[float | None] = mapped_column(Float)  # best so far
    best_epoch: Mapped[int | None]
    test_accuracy: Mapped[float | None] = mapped_column(Float)  # once, at the best epoch
    train_loss: Mapped[float | None] = mapped_column(Float)  # last epoch's
    attempts: Mapped[int] = mapped_column(default=0)  # claims so far
    pauses: Mapped[int] = mapped_column(default=0, server_default="0")  # claims ended by an ASHA pause
    max_attempts: Mapped[int] = mapped_column(default=3)
    error: Mapped[str | None] = mapped_column(Text)
    worker_id: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[float | None] = mapped_column(Float)  # database clock, epoch s
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    environment: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # torch/CUDA/git versions
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]

    job: Mapped[Job] = relationship(back_populates="trials")
    history: Mapped[list[EpochMetric]] = relationship(
        order_by="EpochMetric.epoch", cascade="all, delete-orphan", passive_deletes=True
    )


class EpochMetric(Base):
    __tablename__ = "epoch_metrics"
    __table_args__ = (UniqueConstraint("trial_id", "epoch"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    trial_id: Mapped[int] = mapped_column(ForeignKey("trials.id", ondelete="CASCADE"), index=True)
    epoch: Mapped[int]
    train_loss: Mapped[float] = mapped_column(Float)
    train_accuracy: Mapped[float] = mapped_column(Float)
    val_loss: Mapped[float] = mapped_column(Float)
    val_accuracy: Mapped[float] = mapped_column(Float)
    lr: Mapped[float] = mapped_column(Float)
    seconds: Mapped[float] = mapped_column(Float)
    images_per_second: Mapped[float] = mapped_column(Float)
    attempt: Mapped[int]


class RegisteredModel(Base):
    """A servable checkpoint: the best epoch of a finished trial."""

    __tablename__ = "models"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    trial_id: Mapped[int] = mapped_column(ForeignKey("trials.id", ondelete="CASCADE"), unique=True)
    arch: Mapped[str] = mapped_column(String(64))
    epoch: Mapped[int]
    val_accuracy: Mapped[float] = mapped_column(Float)
    test_accuracy: Mapped[float | None] = mapped_column(Float)
    path: Mapped[str] = mapped_column(Text)  # relative to the artifacts directory
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    promoted_at: Mapped[datetime | None]  # a user's promotion overrides "highest val_accuracy"


class Worker(Base):
    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int]
    gpus: Mapped[str | None] = mapped_column(String(255))
    started_at: Mapped[datetime] = mapped_column(server_default=func.now())
    heartbeat_at: Mapped[float | None] = mapped_column(Float)  # database clock, epoch s
