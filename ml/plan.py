"""Time budgets: how much training fits in `train.time_budget_s` seconds, evaluation included.

The trainer measures its own speed first (`measure`: a few real training steps and a validation
slice, on a throwaway copy of the trial's set-up), then `plan` picks epochs x images per epoch
(and a smaller batch when that leaves too few steps) so that the whole trial, with its set-up,
a validation pass per epoch and the final test, ends within the budget. The planned config
(`Plan.apply`) is what the trial trains with; its schedule (warm-up, one-cycle) is laid out over
the planned steps, so it completes. The plan is saved in last.pt and reused on resume.
bench/time_to_accuracy.py plans with the same function.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ml.config import TrainConfig
from ml.data import MEAN, STD, Splits
from ml.environment import Runtime, seed_everything
from ml.evaluate import evaluate
from ml.setup import build_setup

SAFETY = 0.9  # of the budget planned for: probes are noisy and other processes share the machine
MIN_STEPS = 60  # fewer optimiser steps than this learn little: the batch is halved to get them
MIN_BATCH = 32  # ... but not below this (a CPU's throughput falls with small batches)


class DoesNotFit(ValueError):
    """Not even one batch and the evaluations fit in the budget at the measured speed."""


@dataclass
class Speed:
    train_images_per_second: float
    eval_images_per_second: float  # images evaluated per second (TTA's extra passes included)
    setup_seconds: float  # building the trial's set-up: paid again by the planned trial
    seconds: float  # the measurement's own wall time (part of the budget)


@dataclass
class Plan:
    epochs: int
    epoch_images: int  # training images per epoch (a fresh random draw each epoch when < all)
    batch_size: int
    expected_seconds: float  # of the planned trial, from the measured speed, after the measurement
    budget_seconds: float  # what was left of the budget when planning
    speed: Speed | None  # None: not planned from a measurement (a bench's fixed plan)

    def apply(self, cfg: TrainConfig, n_train: int) -> TrainConfig:
        """`cfg` with the planned length; a changed batch scales lr by the linear rule."""
        values = {**cfg.model_dump(), "epochs": self.epochs}
        values["epoch_images"] = None if self.epoch_images >= n_train else self.epoch_images
        if self.batch_size != cfg.batch_size:
            values |= {"batch_size": self.batch_size, "lr_reference_batch": cfg.batch_size}
        return TrainConfig.model_validate(values)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Plan:
        speed = values.get("speed")
        return cls(**{**values, "speed": Speed(**speed) if speed else None})


def plan(cfg: TrainConfig, speed: Speed, budget: float, n_train: int, n_val: int, n_test: int) -> Plan:
    """Epochs and training images whose schedule completes within `budget` seconds, using it all.

    The recipe's own epochs on every image when they fit. Otherwise the training passes get what
    the fixed costs (set-up, a validation per epoch, the final test) leave, spread over as many
    epochs as it takes to see every image once or more: e.g. 2 epochs of 42,000 images rather than
    1 epoch of 45,000 and half the budget unused. When that leaves fewer than MIN_STEPS steps, the
    batch is halved (not below MIN_BATCH). `n_test` is 0 when the trial is not tested."""
    fixed = speed.setup_seconds + n_test / speed.eval_images_per_second
    validation = n_val / speed.eval_images_per_second

    def trainable(epochs: int) -> float:
        return (SAFETY * budget - fixed - epochs * validation) * speed.train_images_per_second

    smallest_epoch = min(cfg.batch_size, n_train)
    epochs = min(cfg.epochs, max(1, math.ceil(trainable(1) / n_train)))
    # Each extra epoch costs a validation: never spread the time so thin an epoch lacks a batch.
    while epochs > 1 and trainable(epochs) / epochs < smallest_epoch:
        epochs -= 1
    images = min(n_train, math.floor(trainable(epochs) / epochs))
    if images < smallest_epoch:
        raise DoesNotFit(
            f"time_budget_s {budget:.0f} s does not fit one batch plus validation and test here "
            f"(set-up and evaluations alone take {fixed + validation:.0f} s at the measured speed)"
        )
    batch = cfg.batch_size
    while batch // 2 >= MIN_BATCH and epochs * (images // batch) < MIN_STEPS:
        batch //= 2
    expected = fixed + epochs * (validation + images / speed.train_images_per_second)
    return Plan(epochs, images, batch, expected, budget, speed)


def measure(
    cfg: TrainConfig,
    splits: Splits,
    runtime: Runtime,
    allow_download: bool,
    seconds: float,
    train_one_epoch: Callable[..., Any],
) -> Speed:
    """Train a throwaway copy of the trial with the epoch loop's own `train_one_epoch`
    (ml.engine's, passed in: the engine imports this module) for about `seconds` after one warm-up
    step, and validate a slice of the validation set. The caller re-seeds before building the
    trial it keeps."""
    start = time.perf_counter()
    seed_everything(cfg.seed)
    setup = build_setup(cfg, splits, runtime, allow_download)
    setup_seconds = time.perf_counter() - start
    clock = _Clock(runtime)
    train_one_epoch(
        setup.net,
        setup.optimizer,
        setup.scheduler,
        clock.timed(setup.epoch_batches(1), seconds),
        criterion=setup.criterion,
        epoch=1,
        runtime=runtime,
        ema_update=setup.ema.update if setup.ema else None,
    )
    images, train_seconds = clock.stop()
    if images == 0:  # a set of one batch: the warm-up step is the only measurement
        images, train_seconds = len(setup.train_y), max(time.perf_counter() - start - setup_seconds, 1e-3)
    n = min(len(setup.val_y), 2 * cfg.batch_size)
    eval_start = time.perf_counter()
    args = (cfg.batch_size, MEAN, STD, cfg.tta, cfg.channels_last, runtime.precision, cfg.tta_translate)
    evaluate(setup.eval_net, setup.val_x[:n], setup.val_y[:n], *args)
    _sync(runtime)
    eval_rate = n / max(time.perf_counter() - eval_start, 1e-6)
    del setup
    gc.collect()
    return Speed(images / train_seconds, eval_rate, setup_seconds, time.perf_counter() - start)


class _Clock:
    """Times the batches after the first (which pays for allocations and kernel choices)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime, self.started, self.images = runtime, 0.0, 0

    def timed(self, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], seconds: float) -> Iterator:
        """`batches` until `seconds` have passed since the second one was asked for."""
        for i, batch in enumerate(batches):
            if i == 1:  # the first step is done
                _sync(self.runtime)
                self.started = time.perf_counter()
            elif i > 1 and time.perf_counter() - self.started >= seconds:
                return
            self.images += len(batch[1]) if i >= 1 else 0
            yield batch

    def stop(self) -> tuple[int, float]:
        """(images timed, their seconds)."""
        _sync(self.runtime)
        return self.images, time.perf_counter() - self.started


def probe_seconds(budget: float) -> float:
    """How long `measure` trains: long enough to be steady, a small part of the budget."""
    return min(15.0, max(2.0, 0.03 * budget))


def _sync(runtime: Runtime) -> None:
    if runtime.device.type == "cuda":
        torch.cuda.synchronize(runtime.device)
