"""A worker trains a time-budgeted job that tests only its selection (issue 12): the plan is
recorded on each trial and shown by GET /jobs/{id}/trials/{tid}, the trials are not tested one by
one, and once the last trial ends its worker tests the selected trial (only that one)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.api.schemas.jobs import TrialDetail
from app.settings import Settings
from app.store.db import transaction
from app.store.jobs import get_trial, submit_job
from app.store.points import best_point, best_trial_of, job_points
from app.store.tables import Job, RegisteredModel
from app.worker.loop import run_worker
from tests.postgres import ONE_DATABASE
from tests.workers import tiny_spec


@ONE_DATABASE
@pytest.mark.slow
def test_a_budgeted_job_records_plans_and_tests_only_its_selection(
    factory: sessionmaker[Session], worker_settings: Callable[..., Settings], data_dir: Path
) -> None:
    spec = tiny_spec(2, seeds=(0, 1), data={"val_size": 60, "test": "best"}, time_budget_s=120)
    with transaction(factory) as session:
        job, _ = submit_job(session, spec)
        job_id, trial_ids = job.id, [t.id for t in job.trials]
    run_worker(worker_settings(data_dir=data_dir), max_trials=2)
    with factory() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.status == "succeeded"
        details = [TrialDetail.model_validate(get_trial(session, job_id, t)) for t in trial_ids]
        selected = best_trial_of(best_point(job_points(job.trials)))  # type: ignore[arg-type]
        models = {m.trial_id: m for m in session.scalars(select(RegisteredModel))}
    for detail in details:
        assert detail.status == "succeeded" and detail.plan is not None
        assert detail.epochs == detail.plan["epochs"] >= len(detail.history) >= 1  # the planned epochs
        if len(detail.history) < detail.epochs:  # a loaded machine can trip the budget guard
            assert detail.plan["stopped_before_epoch"] == len(detail.history) + 1
        assert detail.plan["speed"]["train_images_per_second"] > 0
    assert selected is not None
    tested = {d.id: d.test_accuracy for d in details}
    assert tested.pop(selected.id) is not None and list(tested.values()) == [None]
    assert models[selected.id].test_accuracy == selected.test_accuracy
