"""progress.eta_seconds: the job's time left from measured epoch times, evaluations included."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session, sessionmaker

from app.store.jobs import get_job, job_eta_seconds
from tests.sweep_rows import advance, start_trial


def _eta(factory: sessionmaker[Session], job_id: int) -> float | None:
    with factory() as session:
        return job_eta_seconds(session, get_job(session, job_id))


def test_eta_is_null_until_an_epoch_then_counts_epochs_and_tests_left(factory: sessionmaker[Session]) -> None:
    job_id, (first, second) = start_trial(factory, n_trials=2, epochs=3)
    assert _eta(factory, job_id) is None
    advance(factory, first, epochs_done=1)  # 10 s an epoch; the other trial has not started
    # The test pass: 10,000 images at 1/3 x 2 (flip TTA) of a trained image's cost, priced from an
    # epoch of 45,000 trained + 5,000 validated images that took 10 s.
    test = 10.0 / (45_000 + 5_000 * 2 / 3) * 10_000 * 2 / 3
    assert _eta(factory, job_id) == pytest.approx(2 * 10.0 + test + 3 * 10.0 + test)
    advance(factory, first, epochs_done=2)
    advance(factory, second, epochs_done=1)  # two running now: the work is shared
    assert _eta(factory, job_id) == pytest.approx((10.0 + test + 2 * 11.0 + 1.1 * test) / 2)  # 11 s epochs
    advance(factory, first, epochs_done=3, finished=True)
    advance(factory, second, epochs_done=3, finished=True)
    assert _eta(factory, job_id) == 0.0
