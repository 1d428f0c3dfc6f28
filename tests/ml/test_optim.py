"""Per-step learning-rate schedules and optimiser construction."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from ml.config import TrainConfig
from ml.optim import SmoothedCrossEntropy, build_optimizer, build_scheduler, lr_factor


def _lrs(cfg: TrainConfig, steps_per_epoch: int) -> list[float]:
    optimizer = build_optimizer(nn.Linear(2, 2), cfg)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch)
    used = []
    for _ in range(cfg.epochs * steps_per_epoch):
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return used


def test_onecycle_rises_linearly_to_the_peak_then_falls_to_near_zero() -> None:
    cfg = TrainConfig(epochs=4, lr=0.4, schedule="onecycle", warmup_fraction=0.25, warmup_min_steps=0)
    lrs = _lrs(cfg, steps_per_epoch=10)  # 40 steps, 10 of warm-up
    peak = lrs.index(max(lrs))
    assert peak == 10 and lrs[peak] == pytest.approx(0.4)
    rises = [b - a for a, b in itertools.pairwise(lrs[: peak + 1])]
    assert all(d == pytest.approx(rises[0]) for d in rises)  # linear
    assert all(b < a for a, b in itertools.pairwise(lrs[peak:]))
    assert lrs[-1] == pytest.approx(0.4 / 30)  # one step short of zero: the last step still learns
    assert lrs[25] == pytest.approx(0.4 * (1 - 15 / 30))  # linear fall


def test_cosine_has_a_linear_warmup_and_a_half_cosine() -> None:
    cfg = TrainConfig(epochs=2, lr=1.0, schedule="cosine", warmup_fraction=0.2, warmup_min_steps=0)
    lrs = _lrs(cfg, steps_per_epoch=50)  # 100 steps, 20 of warm-up
    assert lrs[0] == pytest.approx(1 / 21) and lrs[20] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.5 * (1 + math.cos(math.pi * 40 / 80)))
    assert 0 < lrs[-1] < 0.01


def test_constant_ignores_warmup() -> None:
    cfg = TrainConfig(epochs=2, lr=0.01, schedule="constant", warmup_fraction=0.5, warmup_min_steps=0)
    lrs = _lrs(cfg, steps_per_epoch=5)
    assert lrs == [pytest.approx(0.01)] * 10


def test_no_warmup_starts_at_the_peak() -> None:
    assert lr_factor("onecycle", 0, 10)(0) == 1.0
    assert lr_factor("cosine", 0, 10)(0) == 1.0


def test_one_step_runs_at_the_peak() -> None:
    assert lr_factor("onecycle", 1, 1)(0) == 1.0


def test_the_warmup_floor_keeps_a_short_run_from_rising_faster_than_w_steps() -> None:
    cfg = TrainConfig(epochs=1, lr=0.4, warmup_fraction=0.15, warmup_min_steps=100)
    lrs = _lrs(cfg, steps_per_epoch=20)  # the fraction alone: lr 0.4 after 3 steps
    assert lrs[:5] == pytest.approx([0.4 * (s + 1) / 101 for s in range(5)])
    assert max(lrs) < 0.4 * 20 / 101  # the rise meets the fall long before the peak
    assert lrs[-1] == pytest.approx(0.4 / 17)  # the end of the one-cycle fall is kept


def test_the_warmup_floor_leaves_a_long_run_alone() -> None:
    floored = _lrs(TrainConfig(epochs=4, warmup_fraction=0.25, warmup_min_steps=50), steps_per_epoch=100)
    plain = _lrs(TrainConfig(epochs=4, warmup_fraction=0.25, warmup_min_steps=0), steps_per_epoch=100)
    assert floored == pytest.approx(plain)  # 100 warm-up steps: never steeper than 50


def test_the_warmup_floor_ramps_a_constant_schedule() -> None:
    lrs = _lrs(TrainConfig(epochs=1, lr=0.1, schedule="constant", warmup_min_steps=3), steps_per_epoch=6)
    assert lrs == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1])


def test_sgd_with_nesterov_momentum_and_weight_decay() -> None:
    cfg = TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    group = build_optimizer(nn.Linear(2, 2), cfg).param_groups[0]
    assert (group["momentum"], group["nesterov"], group["weight_decay"]) == (0.9, True, 5e-4)
    plain = build_optimizer(nn.Linear(2, 2), TrainConfig(momentum=0.0, nesterov=True))
    assert plain.param_groups[0]["nesterov"] is False  # torch refuses Nesterov without momentum


def test_adamw() -> None:
    optimizer = build_optimizer(nn.Linear(2, 2), TrainConfig(optimizer="adamw", lr=1e-3, weight_decay=0.05))
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.param_groups[0]["weight_decay"] == 0.05


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_smoothed_cross_entropy_equals_torchs(smoothing: float) -> None:
    logits = torch.randn(6, 10, requires_grad=True)
    labels = torch.randint(0, 10, (6,))
    ours = SmoothedCrossEntropy(smoothing)(logits, labels)
    theirs = nn.CrossEntropyLoss(label_smoothing=smoothing)(logits, labels)
    assert torch.allclose(ours, theirs, atol=1e-6)
    (grad_ours,) = torch.autograd.grad(ours, logits)
    (grad_theirs,) = torch.autograd.grad(theirs, logits)
    assert torch.allclose(grad_ours, grad_theirs, atol=1e-6)
