"""data.test "best": a job whose trials are not tested one by one has its selected trials tested
once, when every trial has ended (the worker that ends the last one does it).

Selection never sees test either way: the selected point is the best on validation
(app.store.points), and its repeats with a registered checkpoint are the ones tested.
"""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.store.points import best_point, job_points
from app.store.registry import ModelInfo
from app.store.tables import Job, RegisteredModel, Trial
from ml.status import ACTIVE


def untested_selection(session: Session, job_id: int) -> list[ModelInfo]:
    """The registered checkpoints of the job's selected point still lacking a test accuracy;
    empty while any trial of the job can still run (or when the job is gone)."""
    job = session.get(Job, job_id)
    if job is None or any(t.status in ACTIVE for t in job.trials):
        return []
    best = best_point(job_points(job.trials))
    if best is None:
        return []
    untested = [t.id for t in best.trials if t.test_accuracy is None]
    rows = session.scalars(select(RegisteredModel).where(RegisteredModel.trial_id.in_(untested)))
    return [ModelInfo.from_row(row) for row in rows]


def record_final_test(session: Session, trial_id: int, accuracy: float, images: int) -> None:
    """The selected trial's test accuracy, on the trial and its registered model; a second worker
    that tested it too (both ended a last trial at once) changes nothing."""
    session.execute(
        update(Trial)
        .where(Trial.id == trial_id, Trial.test_accuracy.is_(None))
        .values(test_accuracy=accuracy, test_images=images)
    )
    session.execute(
        update(RegisteredModel)
        .where(RegisteredModel.trial_id == trial_id, RegisteredModel.test_accuracy.is_(None))
        .values(test_accuracy=accuracy)
    )
