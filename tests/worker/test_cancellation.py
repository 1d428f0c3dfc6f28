"""Cancelling a job stops its running trial mid-epoch, within a bounded number of batches of the
next lease renewal, and the worker keeps no reference to the trial's model afterwards."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from torch import nn

from app.settings import Settings
from app.store.db import transaction
from app.store.jobs import cancel_job, submit_job
from app.store.tables import Job, RegisteredModel
from tests.postgres import ONE_DATABASE
from tests.workers import (
    SMALLER_DATA,
    TRAIN_TIMEOUT_S,
    epoch_rows,
    tiny_spec,
    trial_row,
    wait_for,
    worker_thread,
)


def _live_modules() -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if isinstance(obj, nn.Module))


def _cuda_bytes() -> int:
    return torch.cuda.memory_allocated() if torch.cuda.is_available() else 0


@ONE_DATABASE
@pytest.mark.slow
def test_cancel_stops_a_running_trial_mid_epoch_and_releases_its_model(
    factory: sessionmaker[Session],
    worker_settings: Callable[..., Settings],
    data_dir: Path,
    one_thread: None,
) -> None:
    # Batches of 4: an epoch is 30 batches, much longer than a renewal (0.1 s) plus 10 batches.
    spec = tiny_spec(epochs=3, data=SMALLER_DATA, batch_size=4)
    with transaction(factory) as session:
        job, _ = submit_job(session, spec)
        job_id, trial_id = job.id, job.trials[0].id
    modules_before, cuda_before = _live_modules(), _cuda_bytes()
    stop = threading.Event()
    settings = worker_settings(data_dir=data_dir, heartbeat_seconds=0.1)
    thread, errors = worker_thread(settings, max_trials=None, stop=stop)
    try:
        wait_for(lambda: len(epoch_rows(factory, trial_id)) >= 1 or not thread.is_alive())
        epoch_seconds = epoch_rows(factory, trial_id)[0].seconds
        with transaction(factory) as session:
            cancel_job(session, job_id)
        cancelled_at = time.monotonic()
        wait_for(lambda: trial_row(factory, trial_id).status != "running" or not thread.is_alive())
        stopped_after = time.monotonic() - cancelled_at
        # Back to polling for work, the worker holds nothing of the trial: its network, EMA copy
        # and optimiser state are unreachable, so their (GPU) memory is free for the next trial.
        wait_for(lambda: _live_modules() == modules_before or not thread.is_alive(), timeout=10)
        assert thread.is_alive() and _cuda_bytes() == cuda_before
    finally:
        stop.set()
        thread.join(timeout=TRAIN_TIMEOUT_S)
    assert not thread.is_alive() and errors == []

    trial = trial_row(factory, trial_id)
    # Stopped inside epoch 2: no second epoch was recorded, and well before it could have ended.
    assert (trial.status, trial.epochs_done, trial.test_accuracy) == ("cancelled", 1, None)
    assert [row.epoch for row in epoch_rows(factory, trial_id)] == [1]
    assert stopped_after < epoch_seconds, (stopped_after, epoch_seconds)
    with factory() as session:
        job_row = session.get(Job, job_id)
        assert job_row is not None and job_row.status == "cancelled" and job_row.finished_at is not None
        assert list(session.scalars(select(RegisteredModel))) == []
