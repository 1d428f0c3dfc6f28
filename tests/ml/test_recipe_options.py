"""The recipe options bench/gpu.sh compares (fused optimiser, torch.compile's mode, reflect
translate, alternating flip, translate TTA) do what they say inside a real trial, and a trial
using them resumes exactly. The augmentation and TTA maths are tested in test_augment.py and
test_evaluate.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import ml.setup
from ml.augment import train_batches
from ml.checkpoint import load_checkpoint
from ml.config import AugmentConfig, TrainConfig
from ml.data import Splits
from ml.optim import build_optimizer
from ml.train import Decision, EpochMetrics, TrialHooks, run_trial

OPTIONS = TrainConfig(
    arch="resnet18_imagenet",
    epochs=2,
    batch_size=10,
    ema_decay=0.9,
    deterministic=True,
    fused=True,
    label_smoothing=0.2,
    augment=AugmentConfig(cutout=12, crop_fill="reflect", flip_mode="alternate"),
    tta_translate=1,
)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_fused_takes_the_same_step_in_one_kernel(optimizer: str) -> None:
    steps = {}
    for fused in (False, True):
        torch.manual_seed(0)
        net = nn.Linear(4, 3)
        opt = build_optimizer(net, TrainConfig(optimizer=optimizer, lr=0.1, fused=fused))
        assert opt.defaults["fused"] is (True if fused else None)
        for _ in range(3):
            opt.zero_grad()
            net(torch.ones(2, 4)).square().sum().backward()
            opt.step()
        steps[fused] = net.weight.detach().clone()
    assert torch.allclose(steps[False], steps[True], atol=1e-6)


@pytest.mark.slow
def test_compile_mode_reaches_torch_compile(
    micro_splits: Splits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    modes = []
    compile_ = torch.compile

    def eager_compile(module: nn.Module, **kwargs: Any) -> Any:
        modes.append(kwargs.get("mode"))  # inductor's modes take minutes on two cores: eager here
        return compile_(module, backend="eager")

    monkeypatch.setattr(torch, "compile", eager_compile)
    cfg = TrainConfig(arch="resnet18_imagenet", epochs=1, batch_size=10, compile=True)
    run_trial(
        cfg.model_copy(update={"compile_mode": "reduce-overhead"}), micro_splits, tmp_path, device_ids=[]
    )
    assert modes == ["reduce-overhead", "reduce-overhead"]  # the trained network and its EMA copy


class CrashAfterFirstEpoch(TrialHooks):
    def epoch_end(self, metrics: EpochMetrics, history: list[EpochMetrics]) -> Decision:
        raise KeyboardInterrupt("worker killed after epoch 1")


@pytest.mark.slow
def test_a_trial_with_every_option_resumes_exactly(
    micro_splits: Splits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    epochs = []  # alternating flips depend on the epoch the trainer says it is in

    def recording(*args: Any, **kwargs: Any) -> Any:
        epochs.append(args[8])
        return train_batches(*args, **kwargs)

    monkeypatch.setattr(ml.setup, "train_batches", recording)
    straight = run_trial(OPTIONS, micro_splits, tmp_path / "straight", device_ids=[])
    assert epochs == [1, 2]
    with pytest.raises(KeyboardInterrupt):
        run_trial(OPTIONS, micro_splits, tmp_path / "resumed", CrashAfterFirstEpoch(), device_ids=[])
    resumed = run_trial(OPTIONS, micro_splits, tmp_path / "resumed", device_ids=[])

    assert [m.train_loss for m in resumed.history] == [m.train_loss for m in straight.history]
    assert [m.val_loss for m in resumed.history] == [m.val_loss for m in straight.history]
    assert resumed.test_accuracy == straight.test_accuracy is not None
    ours = load_checkpoint(tmp_path / "resumed" / "last.pt")["model"]
    theirs = load_checkpoint(tmp_path / "straight" / "last.pt")["model"]
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
