"""Extending a trial: the same run, trained on to more epochs from its checkpoint.

A trial is extended by raising its config's `epochs` (POST /jobs/{id}/extend). When the trainer
resumes a last.pt written for fewer epochs, `check_resumable` accepts the config (only `epochs`
may differ, and only upwards past the epochs done) and `relay` re-lays the learning-rate
schedule (`ml.optim.LaidSchedule`):

    the continued run warms up afresh over `warmup_fraction` of its new steps, to the lr a run
    planned for the new number of epochs from the start would have at the continuation point,
    then falls with the schedule's shape to ~0 at the new last step.

A trial whose last.pt the job's retention deleted continues from best.pt alone
(`ml.trial_state`): the best epoch's weights, a fresh optimiser, history cut after that epoch,
and the same rule from there.

So a 10-epoch one-cycle run extended to 40 epochs re-warms to 0.88 x the peak and anneals over
30 epochs; it never restarts at the peak. The history goes on at epoch done + 1. A trial that
was pruned before its planned epochs and is continued to those same epochs keeps its schedule.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.optim.lr_scheduler import LambdaLR

from ml.config import TrainConfig
from ml.optim import LaidSchedule


def check_resumable(saved: dict[str, Any], cfg: TrainConfig, done_epochs: int, path: Path) -> None:
    """ValueError unless a checkpoint of `saved` config, `done_epochs` in, may go on with `cfg`:
    the same config, or the same but for more epochs (an extension)."""
    current = cfg.model_dump(mode="json")
    same_but_epochs = {**saved, "epochs": cfg.epochs} == current
    if saved == current or (same_but_epochs and cfg.epochs > done_epochs):
        return
    if same_but_epochs:
        raise ValueError(f"{path} holds {done_epochs} epochs already; cannot train it to {cfg.epochs}")
    raise ValueError(f"{path} was written for another config; remove {path.parent} to start the trial afresh")


def relay(scheduler: LambdaLR, done_epochs: int, epochs: int) -> bool:
    """Lay an extension leg on a restored scheduler when `epochs` exceeds what it was laid for,
    and set the optimiser's lr for the next step accordingly. Returns whether it did."""
    schedule = scheduler.lr_lambdas[0]
    if not isinstance(schedule, LaidSchedule) or schedule.epochs == epochs:
        return False
    schedule.extend(done_epochs, epochs)
    _set_lr(scheduler, schedule)
    return True


def continue_from(scheduler: LambdaLR, done_epochs: int, planned_epochs: int, epochs: int) -> None:
    """A fresh scheduler for a run continued from best.pt alone (no scheduler state): the original
    plan of `planned_epochs`, `done_epochs` taken, and an extension leg to `epochs` (its fresh
    warm-up suits the fresh optimiser), even when `epochs` is the original plan."""
    schedule = scheduler.lr_lambdas[0]
    assert isinstance(schedule, LaidSchedule)
    schedule.legs = [[0, planned_epochs]]
    scheduler.last_epoch = done_epochs * schedule.steps_per_epoch
    if epochs > done_epochs:
        schedule.extend(done_epochs, epochs)
    _set_lr(scheduler, schedule)


def _set_lr(scheduler: LambdaLR, schedule: LaidSchedule) -> None:
    step = scheduler.last_epoch  # steps taken: the next step's lr is the factor at this index
    lrs = [base * schedule(step) for base in scheduler.base_lrs]
    for group, lr in zip(scheduler.optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr
    scheduler._last_lr = lrs  # what get_last_lr() reports until the next step
