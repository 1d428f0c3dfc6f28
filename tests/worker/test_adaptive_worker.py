"""A tpe job trained by a real worker on tiny synthetic data: its points are asked as the worker
claims, the job ends with exactly its target, and every accuracy gets its image count."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.settings import Settings
from app.store.db import transaction
from app.store.jobs import submit_job
from app.store.tables import Job, Trial
from app.worker.loop import run_worker
from ml.job import JobSpec
from tests.postgres import ONE_DATABASE
from tests.workers import TINY_DATA, TINY_TRAIN

LR_RANGE = {"low": 1e-4, "high": 3e-3, "log": True}


@pytest.mark.slow
@ONE_DATABASE
def test_a_worker_runs_a_tpe_job_with_repeats_to_its_target(
    factory: sessionmaker[Session],
    worker_settings: Callable[..., Settings],
    data_dir: Path,
    one_thread: None,
) -> None:
    spec = JobSpec.model_validate(
        {
            "search": {"strategy": "tpe", "trials": 2, "repeats": 2, "space": {"lr": LR_RANGE}},
            "train": {**TINY_TRAIN, "epochs": 1},
            "data": TINY_DATA,
        }
    )  # fmt: skip
    with transaction(factory) as session:
        job_id = submit_job(session, spec)[0].id
    run_worker(worker_settings(data_dir=data_dir), max_trials=4)
    with factory() as session:
        trials = list(session.scalars(select(Trial).where(Trial.job_id == job_id).order_by(Trial.index)))
        job = session.get(Job, job_id)
        assert job is not None and job.status == "succeeded"
    assert [(t.point, t.config["seed"], t.status) for t in trials] == [
        (0, 0, "succeeded"), (0, 1, "succeeded"), (1, 0, "succeeded"), (1, 1, "succeeded")
    ]  # fmt: skip
    assert trials[0].params == trials[1].params != trials[2].params
    assert {(t.val_images, t.test_images) for t in trials} == {(60, 50)}
    assert all(t.val_interval is not None and t.test_interval is not None for t in trials)
