"""Registered models: which one is active, lookups, promotion. One home for the "active" rule."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import UTC, datetime

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from app.errors import Conflict, NotFound
from app.store.artifacts import ArtifactStore, Blob
from app.store.db import db_time
from app.store.tables import RegisteredModel


@dataclass(frozen=True)
class ModelInfo:
    """What a prediction says about the model that made it, plus where its checkpoint is."""

    id: int
    job_id: int
    trial_id: int
    val_accuracy: float
    test_accuracy: float | None
    path: str  # the checkpoint's key in the artifact store

    @classmethod
    def from_row(cls, row: RegisteredModel) -> ModelInfo:
        return cls(row.id, row.job_id, row.trial_id, row.val_accuracy, row.test_accuracy, row.path)

    @property
    def blob(self) -> Blob:
        return Blob(self.path)

    def public(self) -> dict[str, object]:
        """Every field but the checkpoint's path: what an answer may say about the model."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "path"}


def _active_order() -> Select[tuple[RegisteredModel]]:
    # A user's promotion wins (latest first); otherwise the best validation accuracy, and on a tie
    # the newest model, so a retrained model that is as good takes over.
    return select(RegisteredModel).order_by(
        RegisteredModel.promoted_at.desc().nulls_last(),
        RegisteredModel.val_accuracy.desc(),
        RegisteredModel.id.desc(),
    )


def active_model(session: Session) -> RegisteredModel | None:
    return session.scalar(_active_order().limit(1))


def active_model_info(session: Session) -> ModelInfo | None:
    row = active_model(session)
    return None if row is None else ModelInfo.from_row(row)


def get_model(session: Session, model_id: int) -> RegisteredModel:
    row = session.get(RegisteredModel, model_id)
    if row is None:
        raise NotFound(f"model {model_id} does not exist")
    return row


def existing_model_ids(session: Session, model_ids: set[int]) -> set[int]:
    """Those of `model_ids` that still have a row."""
    if not model_ids:
        return set()
    return set(session.scalars(select(RegisteredModel.id).where(RegisteredModel.id.in_(model_ids))))


def list_models(session: Session) -> list[RegisteredModel]:
    return list(session.scalars(select(RegisteredModel).order_by(RegisteredModel.id.desc())))


def promote_model(session: Session, model_id: int, store: ArtifactStore) -> RegisteredModel:
    """Make a model the active one, stamped with the database clock (sub-second, unlike now())."""
    row = get_model(session, model_id)
    if not store.exists(row.path):
        raise Conflict(f"model {model_id} cannot be promoted: its checkpoint {row.path} is missing")
    now = session.scalar(select(db_time(session.get_bind())))  # type: ignore[arg-type]
    row.promoted_at = datetime.fromtimestamp(float(now), UTC)
    session.flush()
    return row
