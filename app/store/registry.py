"""Registered models: which one is active, lookups, promotion, aliases. One home for the "active" rule.

Aliases name models. `champion` is the one /predict serves: pinned by a promotion (or
`PUT /models/aliases/champion`), else automatically the best on validation; unpinning returns to
automatic. Other names (`candidate`, ...) are the user's. Every move of an alias is a row of
`alias_moves` (when, from, to, why), written in the transaction that caused it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import UTC, datetime

from sqlalchemy import Select, select, union
from sqlalchemy.orm import Session

from app.errors import Conflict, ModelArchived, NotFound
from app.store.artifacts import ArtifactStore, Blob
from app.store.db import db_time
from app.store.tables import AliasMove, ModelAlias, RegisteredModel

CHAMPION = "champion"


@dataclass(frozen=True)
class ModelInfo:
    """What a prediction says about the model that made it, plus where its checkpoint is."""

    id: int
    job_id: int
    trial_id: int
    val_accuracy: float
    test_accuracy: float | None
    path: str  # the checkpoint's key in the artifact store
    size: int | None = None  # its bytes and sha256 as registered (None: before migration 0006)
    sha256: str | None = None

    @classmethod
    def from_row(cls, row: RegisteredModel) -> ModelInfo:
        return cls(
            row.id,
            row.job_id,
            row.trial_id,
            row.val_accuracy,
            row.test_accuracy,
            row.path,
            row.size,
            row.sha256,
        )

    @property
    def blob(self) -> Blob:
        """What the store verifies before the checkpoint is loaded."""
        return Blob(self.path, self.size, self.sha256)

    def public(self) -> dict[str, object]:
        """Every field but the checkpoint's: what an answer may say about the model."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _PRIVATE}


_PRIVATE = ("path", "size", "sha256")


def _best_order() -> Select[tuple[RegisteredModel]]:
    # The best validation accuracy, and on a tie the newest model, so a retrained model that is as
    # good takes over. Archived models (retention deleted their weights) cannot be served.
    return (
        select(RegisteredModel)
        .where(RegisteredModel.archived_at.is_(None))
        .order_by(RegisteredModel.val_accuracy.desc(), RegisteredModel.id.desc())
    )


def active_model(session: Session) -> RegisteredModel | None:
    """The champion: the pinned model while there is one, else the best on validation.

    Computed on every read, not trusted from the alias row when unpinned, so two workers
    registering models at the same moment can never leave a worse model in place."""
    alias = session.get(ModelAlias, CHAMPION)
    if alias is not None and alias.pinned:
        pinned = session.get(RegisteredModel, alias.model_id)
        if pinned is not None and pinned.archived_at is None:
            return pinned
    return session.scalar(_best_order().limit(1))


def active_model_info(session: Session) -> ModelInfo | None:
    row = active_model(session)
    return None if row is None else ModelInfo.from_row(row)


def get_model(session: Session, model_id: int) -> RegisteredModel:
    row = session.get(RegisteredModel, model_id)
    if row is None:
        raise NotFound(f"model {model_id} does not exist")
    return row


def unarchived_model(session: Session, model_id: int) -> RegisteredModel:
    """A model whose weights exist: NotFound without a row, ModelArchived (410) once archived."""
    row = get_model(session, model_id)
    if row.archived_at is not None:
        raise ModelArchived(
            f"model {model_id} was archived by its job's retention policy (top-k by validation accuracy): "
            "its metrics are kept, its weights were deleted"
        )
    return row


def existing_model_ids(session: Session, model_ids: set[int]) -> set[int]:
    """Those of `model_ids` that still have a row and weights (not archived)."""
    if not model_ids:
        return set()
    query = select(RegisteredModel.id).where(
        RegisteredModel.id.in_(model_ids), RegisteredModel.archived_at.is_(None)
    )
    return set(session.scalars(query))


def retained_model_ids(session: Session) -> set[int]:
    """Models whose weights a job's retention must keep whatever their rank: the champion (served),
    any a user promoted, any an alias names."""
    active = active_model(session)
    kept = union(
        select(RegisteredModel.id).where(RegisteredModel.promoted_at.is_not(None)),
        select(ModelAlias.model_id),
    )
    return set(session.scalars(kept)) | ({active.id} if active is not None else set())


def list_models(session: Session) -> list[RegisteredModel]:
    return list(session.scalars(select(RegisteredModel).order_by(RegisteredModel.id.desc())))


def promote_model(session: Session, model_id: int, store: ArtifactStore) -> RegisteredModel:
    """Pin `champion` to a model, stamped with the database clock (sub-second, unlike now())."""
    row = servable_model(session, model_id, store)
    now = session.scalar(select(db_time(session.get_bind())))  # type: ignore[arg-type]
    row.promoted_at = datetime.fromtimestamp(float(now), UTC)
    set_alias(session, CHAMPION, model_id, pinned=True, reason="promoted by a user")
    return row


def servable_model(session: Session, model_id: int, store: ArtifactStore) -> RegisteredModel:
    row = unarchived_model(session, model_id)  # archived: 410
    if not store.exists(row.path):
        raise Conflict(f"model {model_id} cannot be served: its checkpoint is missing")
    return row


# --- aliases -------------------------------------------------------------------------------------


def list_aliases(session: Session) -> list[ModelAlias]:
    return list(session.scalars(select(ModelAlias).order_by(ModelAlias.name)))


def aliases_by_model(session: Session) -> dict[int, list[str]]:
    """Model id -> its alias names; `champion` is the live one (see `active_model`)."""
    names: dict[int, list[str]] = {}
    for alias in list_aliases(session):
        if alias.name != CHAMPION:
            names.setdefault(alias.model_id, []).append(alias.name)
    champion = active_model(session)
    if champion is not None:
        names.setdefault(champion.id, []).insert(0, CHAMPION)
    return names


def resolve_alias(session: Session, name: str) -> RegisteredModel:
    if name == CHAMPION:
        row = active_model(session)
    else:
        alias = session.get(ModelAlias, name)
        row = None if alias is None else session.get(RegisteredModel, alias.model_id)
    if row is None:
        raise NotFound(f"alias {name!r} names no model")
    return row


def set_alias(session: Session, name: str, model_id: int | None, *, pinned: bool, reason: str) -> None:
    """Point `name` at `model_id` (None removes it) and record the move, if it is one."""
    alias = session.get(ModelAlias, name)
    before = _last_target(session, name)
    if model_id is None:
        if alias is not None:
            session.delete(alias)
    elif alias is None:
        session.add(ModelAlias(name=name, model_id=model_id, pinned=pinned))
    else:
        alias.model_id, alias.pinned = model_id, pinned
    if before != model_id:
        session.add(AliasMove(alias=name, from_model=before, to_model=model_id, reason=reason))
    session.flush()


def unpin_champion(session: Session, reason: str) -> RegisteredModel | None:
    """Back to automatic: `champion` follows the best validation accuracy again."""
    alias = session.get(ModelAlias, CHAMPION)
    if alias is not None:
        alias.pinned = False
        session.flush()
    return record_champion(session, reason)


def record_champion(session: Session, reason: str) -> RegisteredModel | None:
    """After a model was registered, deleted or archived: write down where `champion` now points
    (a move in the history when it changed). Returns the champion."""
    champion = active_model(session)
    alias = session.get(ModelAlias, CHAMPION)
    pinned = alias is not None and alias.pinned and champion is not None and alias.model_id == champion.id
    set_alias(session, CHAMPION, None if champion is None else champion.id, pinned=pinned, reason=reason)
    return champion


def alias_history(session: Session, alias: str | None = None, limit: int = 100) -> list[AliasMove]:
    """Moves, newest first."""
    query = select(AliasMove).order_by(AliasMove.id.desc()).limit(limit)
    if alias is not None:
        query = query.where(AliasMove.alias == alias)
    return list(session.scalars(query))


def _last_target(session: Session, name: str) -> int | None:
    return session.scalar(
        select(AliasMove.to_model).where(AliasMove.alias == name).order_by(AliasMove.id.desc()).limit(1)
    )
