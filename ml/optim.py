"""Loss, optimiser and per-step learning-rate schedule of a `TrainConfig`."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from ml.config import TrainConfig


class SmoothedCrossEntropy(nn.Module):
    """Cross-entropy against label-smoothed one-hot targets: the numbers of
    nn.CrossEntropyLoss(label_smoothing=...), through the soft-target path, whose CUDA backward is
    deterministic (nll_loss's accumulates with atomics)."""

    def __init__(self, label_smoothing: float) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        n_classes = logits.shape[1]
        target = F.one_hot(labels, n_classes).to(logits.dtype) * (1.0 - self.label_smoothing)
        return F.cross_entropy(logits, target + self.label_smoothing / n_classes)


def build_optimizer(net: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in net.parameters() if p.requires_grad]
    fused = True if cfg.fused else None  # None: torch's own choice (the multi-tensor kernels on CUDA)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    return torch.optim.SGD(
        params,
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov and cfg.momentum > 0,  # torch rejects Nesterov without momentum
        weight_decay=cfg.weight_decay,
        fused=fused,
    )


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int) -> LambdaLR:
    """Stepped once per batch. The lambda is a `LaidSchedule`: its attributes are plain data, which
    LambdaLR saves in its state dict (no code), so a resumed run keeps its extensions."""
    laid = LaidSchedule(cfg.schedule, cfg.warmup_fraction, steps_per_epoch, cfg.epochs, cfg.warmup_min_steps)
    return LambdaLR(optimizer, laid)


class LaidSchedule:
    """The multiplier of the peak lr at each step, laid out in legs of epochs [start, end).

    The first leg is `lr_factor` over the run as planned. Each later leg is an extension (see
    ml.extension): the run continued from epoch `start` to `end` gets a fresh warm-up (the same
    fraction of the new steps) up to the lr that a run planned for `end` epochs from the start
    would have at `start`, then the schedule's fall to ~0 at its new last step. Not a restart at
    the peak: the continued run is the tail of a longer run, after a short re-warm.

    The first leg also has the warm-up floor: min((s+1)/(W+1), factor(s)) with W =
    `warmup_min_steps`, so the lr never rises faster than to the peak in W steps. A warm-up that is
    a fraction of the run is a few steps in a short run (10 steps to lr 0.4 in one epoch at batch
    512), and such a run diverges; in a short run the rise meets the schedule's fall below the peak.
    """

    def __init__(
        self,
        schedule: str,
        warmup_fraction: float,
        steps_per_epoch: int,
        epochs: int,
        warmup_min_steps: int = 0,
    ) -> None:
        self.schedule, self.warmup_fraction, self.steps_per_epoch = schedule, warmup_fraction, steps_per_epoch
        self.warmup_min_steps = warmup_min_steps
        self.legs: list[list[int]] = [[0, epochs]]  # [start epoch, end epoch]: lists, for the state dict

    @property
    def epochs(self) -> int:
        return self.legs[-1][1]

    def extend(self, done_epochs: int, epochs: int) -> None:
        """Lay a new leg: from `done_epochs` (completed) to `epochs` in all."""
        if not done_epochs < epochs:
            raise ValueError(f"an extension needs more epochs than the {done_epochs} done, not {epochs}")
        self.legs.append([done_epochs, epochs])

    def __call__(self, step: int) -> float:
        start, end = next(leg for leg in reversed(self.legs) if leg[0] * self.steps_per_epoch <= step)
        first, total = start * self.steps_per_epoch, end * self.steps_per_epoch
        planned = self._factor(total)
        if start == 0:
            return min((step + 1) / (self.warmup_min_steps + 1), planned(step))
        return planned(first) * self._factor(total - first)(step - first)

    def _factor(self, total: int) -> Callable[[int], float]:
        return lr_factor(self.schedule, round(self.warmup_fraction * total), max(total, 1))


def lr_factor(schedule: str, warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """Multiplier of the peak lr at step s (0-based) of `total_steps`.

    onecycle: linear rise to the peak over the warm-up, then linear fall to ~0 at the last step.
    cosine:   linear rise over the warm-up, then half a cosine down to ~0.
    constant: the peak throughout (warm-up ignored; `LaidSchedule`'s floor still applies).
    """
    if schedule == "constant":
        return _constant
    return functools.partial(_shaped, schedule, min(warmup_steps, total_steps - 1), total_steps)


def _shaped(schedule: str, warmup: int, total_steps: int, step: int) -> float:
    if step < warmup:
        return (step + 1) / (warmup + 1)
    decay_steps = total_steps - warmup
    done = min(step - warmup, decay_steps - 1) / decay_steps  # in [0, 1): never exactly zero
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * done))
    return 1.0 - done


def _constant(step: int) -> float:
    return 1.0
