"""The rows naming a trial's checkpoints in object storage (table `checkpoints`): which key holds
its resume point (`last`) and its best weights (`best`), with their size and sha256.

Rows are written in the epoch's guarded transaction (after `record_epochs`, which raises
LeaseLost for an attempt that lost its lease), so they only ever name what the trial's current
owner uploaded. A local artifacts directory needs none: workers train in it.
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from app.store.artifacts import Blob
from app.store.claims import Claim
from app.store.tables import Checkpoint, RegisteredModel

NAMES = ("last", "best")


def checkpoint_blobs(session: Session, trial_id: int) -> dict[str, Blob]:
    """name -> Blob of the trial's recorded checkpoints (empty before its first epoch)."""
    rows = session.scalars(select(Checkpoint).where(Checkpoint.trial_id == trial_id))
    return {row.name: Blob(row.key, row.size, row.sha256) for row in rows}


def named_keys(session: Session, trial_id: int) -> tuple[dict[str, Blob], set[str]]:
    """(the trial's checkpoint rows, the keys of its registered models): what must not be deleted.
    A model's key stays after a later attempt names a better best.pt (a continued trial)."""
    models = session.scalars(select(RegisteredModel.path).where(RegisteredModel.trial_id == trial_id))
    return checkpoint_blobs(session, trial_id), set(models)


def record_checkpoints(session: Session, claim: Claim, epoch: int, blobs: Mapping[str, Blob]) -> None:
    """Name these uploads as the trial's checkpoints. Call inside the transaction of a guarded
    write-back (`record_epochs`), never on its own."""
    if not blobs:
        return
    unknown = set(blobs) - set(NAMES)
    if unknown:
        raise ValueError(f"checkpoint names are {NAMES}, not {sorted(unknown)}")
    session.execute(
        delete(Checkpoint).where(Checkpoint.trial_id == claim.trial_id, Checkpoint.name.in_(list(blobs)))
    )
    session.execute(
        insert(Checkpoint),
        [
            {
                "trial_id": claim.trial_id,
                "name": name,
                "key": blob.key,
                "size": blob.size,
                "sha256": blob.sha256,
                "epoch": epoch,
                "attempt": claim.attempt,
            }
            for name, blob in blobs.items()
        ],
    )
