"""The database tables. The database is the source of truth for every job, trial and model;
the statuses and the trial transitions are `ml.status`'s, and CHECK constraints refuse others."""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from ml.stats import wilson_interval
from ml.status import JobStatus, TrialStatus


def status_column(enum: type[JobStatus] | type[TrialStatus]) -> Enum:
    """A VARCHAR(16) holding the enum's values (not its member names), read back as members."""
    return Enum(
        enum,
        native_enum=False,
        create_constraint=False,  # the named CHECK below, so a migration can create and drop it
        length=16,
        values_callable=lambda members: [m.value for m in members],
        validate_strings=True,
    )


def status_check(enum: type[JobStatus] | type[TrialStatus], table: str) -> CheckConstraint:
    allowed = ", ".join(f"'{m.value}'" for m in enum)
    return CheckConstraint(f"status IN ({allowed})", name=f"ck_{table}_status")


# Ids that reach a URL are never handed out twice: SQLite would otherwise reuse the largest
# rowid after a delete, and a cached or bookmarked /models/1 would name another model.
AUTOINCREMENT = {"sqlite_autoincrement": True}


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, datetime: DateTime(timezone=True)}


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (status_check(JobStatus, "jobs"), AUTOINCREMENT)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[JobStatus] = mapped_column(status_column(JobStatus), default=JobStatus.QUEUED, index=True)
    spec: Mapped[dict[str, Any]]  # the normalised JobSpec, exactly as validated
    spec_digest: Mapped[str] = mapped_column(String(64))
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    # tpe/cmaes: how many trials the job will have (points x repeats); its trials are created one
    # point at a time as workers can take them. None for grid and random jobs (all created at once).
    trials_target: Mapped[int | None]
    max_concurrent_trials: Mapped[int | None]  # the spec's, for the claim statement; None = unlimited
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]

    trials: Mapped[list[Trial]] = relationship(
        back_populates="job", order_by="Trial.index", cascade="all, delete-orphan", passive_deletes=True
    )


class Trial(Base):
    __tablename__ = "trials"
    __table_args__ = (UniqueConstraint("job_id", "index"), status_check(TrialStatus, "trials"), AUTOINCREMENT)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    index: Mapped[int]
    point: Mapped[int]  # the point of the space it runs; the repeats of a point share it
    params: Mapped[dict[str, Any]]  # only the swept keys
    config: Mapped[dict[str, Any]]  # the full TrainConfig this trial trains with
    status: Mapped[TrialStatus] = mapped_column(
        status_column(TrialStatus), default=TrialStatus.QUEUED, index=True
    )
    epochs_done: Mapped[int] = mapped_column(default=0)
    epochs: Mapped[int]  # to train in all
    val_accuracy: Mapped[float | None] = mapped_column(Float)  # best so far
    best_epoch: Mapped[int | None]
    test_accuracy: Mapped[float | None] = mapped_column(Float)  # once, at the best epoch
    train_loss: Mapped[float | None] = mapped_column(Float)  # last epoch's
    attempts: Mapped[int] = mapped_column(default=0)  # claims so far
    pauses: Mapped[int] = mapped_column(default=0, server_default="0")  # claims ended by an ASHA pause
    preemptions: Mapped[int] = mapped_column(default=0, server_default="0")  # claims ended by SIGTERM
    attempts_forgiven: Mapped[int] = mapped_column(default=0, server_default="0")  # failures before a retry
    extensions: Mapped[int] = mapped_column(default=0, server_default="0")  # POST /jobs/{id}/extend
    max_attempts: Mapped[int] = mapped_column(default=3)
    error: Mapped[str | None] = mapped_column(Text)
    worker_id: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[float | None] = mapped_column(Float)  # database clock, epoch s
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    environment: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # torch/CUDA/git versions
    val_images: Mapped[int | None]  # how many images val_accuracy was measured on (its interval)
    test_images: Mapped[int | None]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    archived_at: Mapped[datetime | None]  # retention deleted its checkpoints: it cannot continue

    job: Mapped[Job] = relationship(back_populates="trials")

    @property
    def val_interval(self) -> tuple[float, float] | None:
        """95 % interval of val_accuracy (Wilson). Until the worker reports how many images it
        validated on (when the trial ends), the job's `data.val_size` stands in."""
        return _interval(self.val_accuracy, self.val_images or self.job.spec["data"]["val_size"])

    @property
    def test_interval(self) -> tuple[float, float] | None:
        return _interval(self.test_accuracy, self.test_images)

    history: Mapped[list[EpochMetric]] = relationship(
        order_by="EpochMetric.epoch", cascade="all, delete-orphan", passive_deletes=True
    )


def _interval(accuracy: float | None, images: int | None) -> tuple[float, float] | None:
    return None if accuracy is None or not images else wilson_interval(accuracy, images)


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
    __table_args__ = (AUTOINCREMENT,)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    trial_id: Mapped[int] = mapped_column(ForeignKey("trials.id", ondelete="CASCADE"), unique=True)
    arch: Mapped[str] = mapped_column(String(64))
    epoch: Mapped[int]
    val_accuracy: Mapped[float] = mapped_column(Float)
    test_accuracy: Mapped[float | None] = mapped_column(Float)
    path: Mapped[str] = mapped_column(Text)  # the checkpoint's key in the artifact store
    size: Mapped[int | None] = mapped_column(BigInteger)  # bytes and sha256 of the checkpoint, checked
    sha256: Mapped[str | None] = mapped_column(String(64))  # on load (None: registered before 0006)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    promoted_at: Mapped[datetime | None]  # a user's promotion overrides "highest val_accuracy"
    archived_at: Mapped[datetime | None]  # retention deleted its weights; row and metrics stay


class Checkpoint(Base):
    """A trial's resume point (`last`) or best weights (`best`) in object storage: the key the
    current attempt uploaded, with its size and sha256. Written in the epoch's guarded
    transaction, so a zombie's uploads are never named here. (A local artifacts directory needs
    no rows: workers train in it; see app.store.artifacts.)"""

    __tablename__ = "checkpoints"

    trial_id: Mapped[int] = mapped_column(ForeignKey("trials.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(16), primary_key=True)  # "last" or "best"
    key: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    epoch: Mapped[int]
    attempt: Mapped[int]


class ModelAlias(Base):
    """A name for a model: `champion` is what /predict serves; others are the user's."""

    __tablename__ = "model_aliases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    pinned: Mapped[bool] = mapped_column(Boolean)  # champion: set by a user, not by "best on validation"
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())


class AliasMove(Base):
    """One move of an alias (history): from which model to which, when and why."""

    __tablename__ = "alias_moves"
    __table_args__ = (AUTOINCREMENT,)

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(server_default=func.now())
    alias: Mapped[str] = mapped_column(String(64), index=True)
    from_model: Mapped[int | None]  # no foreign keys: the history outlives the models it names
    to_model: Mapped[int | None]
    reason: Mapped[str] = mapped_column(Text)


class Worker(Base):
    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int]
    gpus: Mapped[str | None] = mapped_column(String(255))
    started_at: Mapped[datetime] = mapped_column(server_default=func.now())
    heartbeat_at: Mapped[float | None] = mapped_column(Float)  # database clock, epoch s
