"""Extending a trial: the re-laid schedule, and a checkpoint trained on to more epochs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from ml.checkpoint import load_checkpoint
from ml.config import TrainConfig
from ml.data import Splits
from ml.extension import check_resumable, relay
from ml.optim import LaidSchedule, build_optimizer, build_scheduler
from ml.train import run_trial

MICRO = TrainConfig(
    arch="resnet18_imagenet", epochs=1, batch_size=8, optimizer="adamw", lr=1e-3, ema_decay=0.9
)


def _steps(scheduler: torch.optim.lr_scheduler.LambdaLR, n: int) -> list[float]:
    used = []
    for _ in range(n):
        used.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return used


def test_an_extension_rewarms_to_the_longer_runs_lr_then_anneals_to_near_zero() -> None:
    cfg = TrainConfig(epochs=10, lr=1.0, schedule="onecycle", warmup_fraction=0.2)
    scheduler = build_scheduler(build_optimizer(nn.Linear(2, 2), cfg), cfg, steps_per_epoch=10)
    first = _steps(scheduler, 100)
    assert first[-1] < 0.02  # the planned run ended near zero
    state = scheduler.state_dict()
    assert state["lr_lambdas"][0]["legs"] == [[0, 10]]  # plain data in the state dict

    longer = cfg.model_copy(update={"epochs": 40})
    restored = build_scheduler(build_optimizer(nn.Linear(2, 2), longer), longer, steps_per_epoch=10)
    restored.load_state_dict(state)
    assert relay(restored, 10, 40)
    rest = _steps(restored, 300)
    # A 40-epoch run warmed up over 8 epochs is at 1 - 2/32 of its peak after 10 epochs.
    target = 1 - (100 - 80) / 320
    warmup = round(0.2 * 300)
    assert rest[0] == pytest.approx(target / (warmup + 1))  # a fresh warm-up, not the peak
    assert max(rest) == pytest.approx(target) and rest.index(max(rest)) == warmup
    assert 0 < rest[-1] < 0.01
    assert restored.state_dict()["lr_lambdas"][0]["legs"] == [[0, 10], [10, 40]]
    assert not relay(restored, 40, 40)  # laid already


def test_a_constant_schedule_stays_constant_and_a_leg_needs_more_epochs() -> None:
    schedule = LaidSchedule("constant", 0.0, 5, 2)
    schedule.extend(2, 4)
    assert [schedule(s) for s in (0, 9, 10, 19)] == [1.0] * 4
    with pytest.raises(ValueError, match="more epochs than the 4 done"):
        schedule.extend(4, 4)


def test_only_more_epochs_may_differ_from_the_checkpoints_config(tmp_path: Path) -> None:
    saved = MICRO.model_dump(mode="json")
    check_resumable(saved, MICRO, 1, tmp_path / "last.pt")
    check_resumable(saved, MICRO.model_copy(update={"epochs": 3}), 1, tmp_path / "last.pt")
    with pytest.raises(ValueError, match="another config"):
        check_resumable(saved, MICRO.model_copy(update={"epochs": 3, "lr": 0.1}), 1, tmp_path / "last.pt")
    with pytest.raises(ValueError, match="holds 3 epochs already"):
        check_resumable({**saved, "epochs": 5}, MICRO.model_copy(update={"epochs": 2}), 3, tmp_path / "x")


def test_a_finished_trial_trains_on_from_its_checkpoint(micro_splits: Splits, tmp_path: Path) -> None:
    one = run_trial(MICRO, micro_splits, tmp_path, device_ids=[])
    assert [m.epoch for m in one.history] == [1]
    three = run_trial(MICRO.model_copy(update={"epochs": 3}), micro_splits, tmp_path, device_ids=[])
    assert [m.epoch for m in three.history] == [1, 2, 3]
    assert three.history[0] == one.history[0]  # restored, not retrained
    assert three.status == "succeeded" and three.test_accuracy is not None
    last = load_checkpoint(tmp_path / "last.pt")
    assert last["scheduler"]["lr_lambdas"][0]["legs"] == [[0, 1], [1, 3]]
    assert last["metadata"]["config"]["epochs"] == 3
    assert three.history[1].lr > one.history[0].lr  # re-warmed, not left at the end of the first run


def test_without_last_pt_a_trial_continues_from_best_pt_and_its_best_epoch(
    micro_splits: Splits, tmp_path: Path
) -> None:
    two = run_trial(MICRO.model_copy(update={"epochs": 2}), micro_splits, tmp_path, device_ids=[])
    best = max(two.history, key=lambda m: (m.val_accuracy, -m.epoch))
    (tmp_path / "last.pt").unlink()  # what the job's retention policy deletes
    assert [m["epoch"] for m in load_checkpoint(tmp_path / "best.pt")["curve"]] == list(
        range(1, best.epoch + 1)
    )
    four = run_trial(MICRO.model_copy(update={"epochs": 4}), micro_splits, tmp_path, device_ids=[])
    assert [m.epoch for m in four.history] == list(range(1, 5))
    assert four.history[: best.epoch] == two.history[: best.epoch]  # up to the best epoch, then a new branch
    legs = load_checkpoint(tmp_path / "last.pt")["scheduler"]["lr_lambdas"][0]["legs"]
    assert legs == [[0, 2], [best.epoch, 4]]
