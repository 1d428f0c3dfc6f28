"""The training benchmarks' own logic: the time-budget plan (bench/gpu.sh --dry-run is tested in
test_gpu_kit.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.time_to_accuracy import DoesNotFit, Plan, Probe, plan
from ml.config import REPORT_RECIPE, TrainConfig

REPO = Path(__file__).resolve().parents[2]
# 1,000 train img/s, 5,000 eval img/s, 10 s of set-up: an epoch of 45,000 images + 5,000 to
# validate takes 46 s, and the final test of 10,000 images 2 s.
PROBE = Probe(train_images_per_second=1000.0, eval_images_per_second=5000.0, setup_seconds=10.0, seconds=5.0)


def _plan(budget: float, cfg: TrainConfig | None = None) -> Plan:
    return plan(cfg or TrainConfig(), PROBE, budget, n_train=45_000, n_val=5000, n_test=10_000)


def test_a_budget_that_fits_the_recipe_runs_all_its_epochs() -> None:
    chosen = _plan(budget=3000.0)  # 40 epochs need 10 + 40 * 46 + 2 = 1,852 s
    assert (chosen.epochs, chosen.train_images) == (40, 45_000)
    assert chosen.expected_seconds == pytest.approx(1852.0)


def test_a_smaller_budget_fills_its_safety_margin_with_more_epochs_of_fewer_images() -> None:
    # 90 % of 600 s is 540 s; minus 12 s of set-up and test, 528 s hold 11.5 epochs of 46 s: that
    # is 12 epochs (each with its 1 s validation) of 43,000 images.
    chosen = _plan(budget=600.0)
    assert (chosen.epochs, chosen.train_images) == (12, 43_000)
    assert chosen.expected_seconds == pytest.approx(0.9 * 600.0)
    report = _plan(budget=600.0, cfg=TrainConfig(**REPORT_RECIPE))
    assert report == chosen  # the plan depends on measured speed, not on the recipe's own epochs


def test_a_budget_below_one_epoch_trains_one_epoch_of_a_subset() -> None:
    chosen = _plan(budget=40.0)  # 36 s: 10 s set-up, 1 s validation, 2 s test, 23 s of training
    assert chosen.epochs == 1 and chosen.train_images == 23_000
    with pytest.raises(DoesNotFit, match="do not fit one batch"):
        _plan(budget=14.0)


def test_a_small_dataset_gets_no_more_epochs_than_leave_a_batch_each() -> None:
    # 36 s leave 23,000 training images: 46 epochs of 500 would leave less than a batch of 512
    # after 45 more validations; so fewer, fuller epochs.
    chosen = plan(TrainConfig(), PROBE, 40.0, n_train=500, n_val=5000, n_test=10_000)
    assert 1 < chosen.epochs < 40 and chosen.train_images == 500
    assert chosen.expected_seconds <= 0.9 * 40.0
