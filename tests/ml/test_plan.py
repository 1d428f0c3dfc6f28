"""Time budgets: the plan (ml.plan, also bench/time_to_accuracy.py's) and a budgeted trial."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from ml.checkpoint import load_checkpoint
from ml.config import REPORT_RECIPE, DataConfig, TrainConfig
from ml.data import Splits
from ml.engine import Deadline
from ml.eta import remaining_seconds
from ml.job import JobSpec
from ml.plan import DoesNotFit, Plan, Speed, plan
from ml.train import TrialHooks, run_trial

REPO = Path(__file__).resolve().parents[2]
# 1,000 train img/s, 5,000 eval img/s, 10 s of set-up: an epoch of 45,000 images + 5,000 to
# validate takes 46 s, and the final test of 10,000 images 2 s.
PROBE = Speed(train_images_per_second=1000.0, eval_images_per_second=5000.0, setup_seconds=10.0, seconds=5.0)


def _plan(budget: float, cfg: TrainConfig | None = None) -> Plan:
    return plan(cfg or TrainConfig(), PROBE, budget, n_train=45_000, n_val=5000, n_test=10_000)


def test_a_budget_that_fits_the_recipe_runs_all_its_epochs() -> None:
    chosen = _plan(budget=3000.0)  # 40 epochs need 10 + 40 * 46 + 2 = 1,852 s
    assert (chosen.epochs, chosen.epoch_images) == (40, 45_000)
    assert chosen.expected_seconds == pytest.approx(1852.0)


def test_a_smaller_budget_fills_its_safety_margin_with_more_epochs_of_fewer_images() -> None:
    # 90 % of 600 s is 540 s; minus 12 s of set-up and test, 528 s hold 11.5 epochs of 46 s: that
    # is 12 epochs (each with its 1 s validation) of 43,000 images.
    chosen = _plan(budget=600.0)
    assert (chosen.epochs, chosen.epoch_images) == (12, 43_000)
    assert chosen.expected_seconds == pytest.approx(0.9 * 600.0)
    report = _plan(budget=600.0, cfg=TrainConfig(**REPORT_RECIPE))
    # the plan depends on measured speed, not on the recipe's own epochs
    assert (report.epochs, report.epoch_images) == (chosen.epochs, chosen.epoch_images)


def test_a_budget_below_one_epoch_trains_one_epoch_of_a_subset() -> None:
    chosen = _plan(budget=40.0)  # 36 s: 10 s set-up, 1 s validation, 2 s test, 23 s of training
    assert chosen.epochs == 1 and chosen.epoch_images == 23_000
    with pytest.raises(DoesNotFit, match="does not fit one batch"):
        _plan(budget=14.0)


def test_a_small_dataset_gets_no_more_epochs_than_leave_a_batch_each() -> None:
    # 36 s leave 23,000 training images: 46 epochs of 500 would leave less than a batch of 512
    # after 45 more validations; so fewer, fuller epochs.
    chosen = plan(TrainConfig(), PROBE, 40.0, n_train=500, n_val=5000, n_test=10_000)
    assert 1 < chosen.epochs < 40 and chosen.epoch_images == 500
    assert chosen.expected_seconds <= 0.9 * 40.0


def test_too_few_steps_halve_the_batch_and_apply_scales_lr() -> None:
    cfg = TrainConfig(preset="cpu", batch_size=512)
    chosen = plan(cfg, PROBE, 40.0, n_train=45_000, n_val=5000, n_test=10_000)
    assert chosen.epochs == 1 and chosen.epoch_images == 23_000  # 44 steps of 512: too few
    assert chosen.batch_size == 256 and 23_000 // 256 >= 60
    planned = chosen.apply(cfg, n_train=45_000)
    assert (planned.epochs, planned.epoch_images, planned.batch_size) == (1, 23_000, 256)
    assert planned.lr == pytest.approx(cfg.lr / 2) and planned.time_budget_s is None  # half the batch


def test_a_plan_over_every_image_leaves_epoch_images_unset() -> None:
    chosen = _plan(budget=3000.0)
    assert chosen.apply(TrainConfig(), n_train=45_000).epoch_images is None
    assert Plan.from_dict(chosen.as_dict()) == chosen


def test_a_budget_cannot_be_combined_with_early_stopping_or_ddp() -> None:
    with pytest.raises(ValidationError, match="cannot be combined"):
        JobSpec.model_validate({"train": {"time_budget_s": 60}, "early_stopping": {"strategy": "asha"}})
    with pytest.raises(ValidationError, match="cannot be combined"):
        JobSpec.model_validate(
            {"search": {"space": {"time_budget_s": [60, 120]}}, "early_stopping": {"strategy": "median"}}
        )
    with pytest.raises(ValidationError, match="ddp"):
        TrainConfig(time_budget_s=60, parallel="ddp")


@pytest.mark.slow
def test_a_budgeted_trial_measures_plans_records_and_resumes_its_plan(
    micro_splits: Splits, tmp_path: Path
) -> None:
    cfg = TrainConfig(arch="resnet18_imagenet", batch_size=4, epochs=3, time_budget_s=60, warmup_min_steps=0)
    seen: list[tuple[Plan, TrainConfig]] = []

    class Planned(TrialHooks):
        def planned(self, chosen: Plan, planned: TrainConfig) -> None:
            seen.append((chosen, planned))

    result = run_trial(cfg, micro_splits, tmp_path, Planned(), device_ids=[])
    [(chosen, planned)] = seen
    assert chosen.speed is not None and chosen.speed.train_images_per_second > 0
    assert planned.epochs == chosen.epochs <= 3
    plan = result.environment["plan"]
    if len(result.history) < chosen.epochs:  # a loaded machine can trip the budget guard
        assert plan.pop("stopped_before_epoch") == len(result.history) + 1
    plan.pop("cut_in_epoch", None)
    assert plan == chosen.as_dict()
    last = load_checkpoint(tmp_path / "last.pt")["metadata"]
    assert last["plan"] == chosen.as_dict() and last["config"] == planned.model_dump(mode="json")
    seen.clear()
    again = run_trial(cfg, micro_splits, tmp_path, Planned(), device_ids=[])  # resumes: no new plan
    assert seen == [] and again.environment["plan"]["epochs"] == chosen.epochs


def test_remaining_seconds_prices_the_test_from_the_epoch_time() -> None:
    data = DataConfig(val_size=5000, train_limit=20_000)
    no_tta = TrainConfig(tta=False)
    # an epoch: 20,000 trained + 5,000 validated at 1/3 the cost = 21,667 image-costs in 13 s
    per_image = 13.0 / (20_000 + 5000 / 3)
    expected = 26.0 + per_image * 10_000 / 3
    assert remaining_seconds(no_tta, data, 2, 13.0, tested=True) == pytest.approx(expected)
    assert remaining_seconds(no_tta, data, 2, 13.0, tested=False) == 26.0
    assert remaining_seconds(TrainConfig(epoch_images=1000), data, 0, 5.0, tested=False) == 0.0


def test_the_deadline_stops_an_epoch_in_time_for_its_evaluations() -> None:
    now = time.monotonic()
    batches = [(torch.zeros(1), torch.zeros(1))] * 5
    late = Deadline(end=now + 10.0, val_seconds=4.0, test_seconds=8.0)  # training had to end 2 s ago
    assert len(list(late.batches(iter(batches), epoch=3))) == 1 and late.cut_epoch == 3  # one batch at least
    roomy = Deadline(end=now + 100.0, val_seconds=4.0, test_seconds=8.0)
    assert len(list(roomy.batches(iter(batches), epoch=1))) == 5 and roomy.cut_epoch is None
    assert roomy.fits_epoch(80.0) and not roomy.fits_epoch(95.0)  # 92 s left before the test
