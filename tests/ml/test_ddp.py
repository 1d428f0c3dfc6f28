"""parallel="ddp" on the CPU with two gloo processes: the same curve as one process with the same
global batch, and hooks, cancellation, aborts, failures and resuming as in a single-process trial."""

from __future__ import annotations

import math
import multiprocessing
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import torch

from ml import distributed
from ml.checkpoint import load_checkpoint
from ml.config import DataConfig, TrainConfig
from ml.data import Splits, make_splits
from ml.distributed import SplitArrays, per_rank_batch, rank_devices
from ml.models import build_model
from ml.train import Decision, EpochMetrics, TrialAborted, TrialHooks, TrialResult, run_trial
from tests.synthetic import make_dataset

# Group norm normalises each image on its own, so two ranks of 8 images compute what one process
# of 16 does, up to float summation order (batch norm would use per-rank statistics). Moderate
# momentum keeps that float noise from growing: with momentum 0.9 this tiny net's weights drift
# apart by a few % within 8 steps, with 0.5 by < 0.1 %. EMA, label smoothing, cutout and TTA stay on.
DDP = TrainConfig(
    arch="resnet18_imagenet",
    norm="group",
    epochs=2,
    batch_size=16,
    lr=0.002,
    momentum=0.5,
    ema_decay=0.9,
    parallel="ddp",
    deterministic=True,
    precision="fp32",  # "auto" is bf16 on CPUs with AVX512-BF16/AMX, whose rounding dwarfs summation order
    warmup_min_steps=0,  # 8 steps in all: the GPU recipe's warm-up floor would keep lr near zero
)
SINGLE = DDP.model_copy(update={"parallel": "none"})
TIMING = ("seconds", "images_per_second")


class Recorder(TrialHooks):
    """What the supervising process's hooks saw."""

    def __init__(self, cancel_at: int | None = None) -> None:
        self.cancel_at = cancel_at
        self.restored_history: list[EpochMetrics] | None = None
        self.ends: list[EpochMetrics] = []

    def restored(self, history: list[EpochMetrics]) -> None:
        self.restored_history = history

    def epoch_end(self, metrics: EpochMetrics, history: list[EpochMetrics]) -> Decision:
        self.ends.append(metrics)
        return Decision.CANCEL if metrics.epoch == self.cancel_at else Decision.CONTINUE


def _curve(history: list[EpochMetrics]) -> list[dict[str, Any]]:
    return [{k: v for k, v in asdict(m).items() if k not in TIMING} for m in history]


def _distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float((a[name] - b[name]).double().norm()) ** 2 for name in a))


@pytest.fixture(scope="module")
def small_splits() -> Splits:
    """64 train (4 batches of 16), 16 val, 50 test images."""
    return make_splits(make_dataset(8, 5, seed=0), DataConfig(val_size=16), seed=0)


@pytest.fixture(scope="module")
def single(small_splits: Splits, tmp_path_factory: pytest.TempPathFactory) -> tuple[TrialResult, Path]:
    torch.set_num_threads(1)
    out_dir = tmp_path_factory.mktemp("single")
    return run_trial(SINGLE, small_splits, out_dir, device_ids=[]), out_dir


@pytest.fixture(scope="module")
def ddp(small_splits: Splits, tmp_path_factory: pytest.TempPathFactory) -> tuple[TrialResult, Path, Recorder]:
    torch.set_num_threads(1)  # so each of the two ranks gets one thread
    out_dir, hooks = tmp_path_factory.mktemp("ddp"), Recorder()
    return run_trial(DDP, small_splits, out_dir, hooks, device_ids=[]), out_dir, hooks


@pytest.mark.slow
def test_two_ranks_follow_the_single_process_curve(
    single: tuple[TrialResult, Path], ddp: tuple[TrialResult, Path, Recorder]
) -> None:
    (expected, expected_dir), (result, out_dir, hooks) = single, ddp
    # Summation-order noise grows with each step; how fast depends on the CPU's kernels (AVX2 kept
    # it under 1e-4 here, AVX-512 reaches 1e-3 by epoch 2). 2e-3 is still far below the >= 3 %
    # that one epoch moves the losses (asserted below).
    for ours, theirs in zip(result.history, expected.history, strict=True):
        assert ours.train_loss == pytest.approx(theirs.train_loss, rel=2e-3)
        assert ours.val_loss == pytest.approx(theirs.val_loss, rel=2e-3)
        assert ours.lr == pytest.approx(theirs.lr, rel=1e-9)
        assert ours.train_accuracy == pytest.approx(theirs.train_accuracy, abs=1 / 64 + 1e-9)  # 1 image
        assert ours.val_accuracy == pytest.approx(theirs.val_accuracy, abs=1 / 16 + 1e-9)
    assert result.test_accuracy == pytest.approx(expected.test_accuracy, abs=1 / 50 + 1e-9)
    # A curve, not a flat line: the tolerance above is far below what one epoch changes.
    assert expected.history[1].train_loss < expected.history[0].train_loss * 0.97
    assert expected.history[1].val_loss < expected.history[0].val_loss * 0.97

    # The weights too: apart by < 5 % of the way training moved them from the initial ones (< 0.1 %
    # on an AVX2 CPU, 3.5 % on an AVX-512 one, where group norm over 1x1 maps amplifies rounding).
    # A rank whose gradients were lost, or a sum in place of the average, would change the step
    # itself rather than its rounding.
    torch.manual_seed(DDP.seed)
    initial = build_model(DDP).state_dict()
    ours_ckpt, theirs_ckpt = load_checkpoint(out_dir / "last.pt"), load_checkpoint(expected_dir / "last.pt")
    moved = _distance(theirs_ckpt["train_model"], initial)
    assert moved > 0.1 and _distance(ours_ckpt["train_model"], theirs_ckpt["train_model"]) < 0.05 * moved

    # Rank 0 alone wrote checkpoints and called the hooks, with the all-reduced metrics.
    assert sorted(p.name for p in out_dir.iterdir()) == ["best.pt", "last.pt"]
    assert ours_ckpt["metadata"]["world_size"] == 2 and ours_ckpt["ema_updates"] == 8  # 4 steps x 2
    assert hooks.ends == result.history and hooks.restored_history is None
    assert result.environment["parallel"] == "ddp" and result.environment["device_type"] == "cpu"


@pytest.mark.slow
def test_cancelled_then_resumed_equals_the_uninterrupted_run(
    ddp: tuple[TrialResult, Path, Recorder], small_splits: Splits, tmp_path: Path
) -> None:
    expected, expected_dir, _ = ddp
    first = Recorder(cancel_at=1)
    cancelled = run_trial(DDP, small_splits, tmp_path, first, device_ids=[])
    assert cancelled.status == "cancelled" and cancelled.test_accuracy is None
    assert [m.epoch for m in first.ends] == [1] and cancelled.history == first.ends

    second = Recorder()
    resumed = run_trial(DDP, small_splits, tmp_path, second, device_ids=[])
    assert second.restored_history == first.ends and [m.epoch for m in second.ends] == [2]
    assert resumed.status == "succeeded" and resumed.test_accuracy == expected.test_accuracy
    assert _curve(resumed.history) == _curve(expected.history)  # exactly: same ranks, same seed
    ours, theirs = load_checkpoint(tmp_path / "last.pt"), load_checkpoint(expected_dir / "last.pt")
    for key in ("model", "train_model", "optimizer", "rng"):
        assert_same(ours[key], theirs[key])


def assert_same(a: Any, b: Any) -> None:
    """Equal nested checkpoint values: tensors bit for bit, everything else by ==."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    else:
        assert a == b


@pytest.mark.slow
def test_should_stop_aborts_every_rank(micro_splits: Splits, tmp_path: Path) -> None:
    class StopAtOnce(TrialHooks):
        def should_stop(self) -> bool:
            return True

    cfg = DDP.model_copy(update={"batch_size": 10, "epochs": 1})
    with pytest.raises(TrialAborted, match="should_stop"):
        run_trial(cfg, micro_splits, tmp_path, StopAtOnce(), device_ids=[])
    assert multiprocessing.active_children() == []
    assert not (tmp_path / "last.pt").exists()


@pytest.mark.slow
def test_a_raising_hook_fails_the_trial_and_ends_the_ranks(micro_splits: Splits, tmp_path: Path) -> None:
    class LeaseLost(Exception):
        pass

    class LoseLease(TrialHooks):
        def epoch_end(self, metrics: EpochMetrics, history: list[EpochMetrics]) -> Decision:
            raise LeaseLost(f"after epoch {metrics.epoch}")

    cfg = DDP.model_copy(update={"batch_size": 10, "epochs": 3})
    with pytest.raises(LeaseLost, match="after epoch 1"):
        run_trial(cfg, micro_splits, tmp_path, LoseLease(), device_ids=[])
    assert multiprocessing.active_children() == []  # the ranks waiting for the decision are gone
    assert load_checkpoint(tmp_path / "last.pt")["metadata"]["epoch"] == 1


def test_a_rank_exception_is_raised_with_its_remote_traceback() -> None:
    # Spawning costs seconds; the supervisor's side of a failing rank is tested on a real pipe.
    parent, child = multiprocessing.Pipe()
    child.send(("error", FloatingPointError("loss became NaN at epoch 1 batch 2"), "Traceback: in rank"))
    rank = distributed._Rank(multiprocessing.get_context("spawn").Process(), parent)
    with pytest.raises(FloatingPointError, match="NaN") as raised:
        distributed._handle(1, rank, parent.recv(), TrialHooks(), {})
    assert isinstance(raised.value.__cause__, distributed.RemoteTraceback)
    assert "in rank 1" in str(raised.value.__cause__)


def test_the_global_batch_must_split_evenly_across_ranks(tiny_splits: Splits, tmp_path: Path) -> None:
    assert per_rank_batch(512, 8) == 64
    with pytest.raises(ValueError, match="divisible by 2"):
        run_trial(DDP.model_copy(update={"batch_size": 15}), tiny_splits, tmp_path, device_ids=[])
    assert not any(tmp_path.iterdir())  # refused before any process started


def test_one_rank_per_gpu_or_two_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    assert rank_devices([]) == [torch.device("cpu")] * 2
    assert rank_devices([], cpu_world_size=3) == [torch.device("cpu")] * 3
    if not torch.cuda.is_available():
        assert rank_devices(None) == [torch.device("cpu")] * 2
        with pytest.raises(ValueError, match="CUDA is not available"):
            rank_devices([0, 1])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert rank_devices([2, 3]) == [torch.device("cuda", 2), torch.device("cuda", 3)]
    assert rank_devices(None) == [torch.device("cuda", i) for i in range(4)]


def test_splits_travel_to_the_ranks_unchanged_and_channels_last(tiny_splits: Splits) -> None:
    back = SplitArrays.pack(tiny_splits).unpack()
    for name in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y"):
        assert torch.equal(getattr(back, name), getattr(tiny_splits, name)), name
    assert back.train_x.is_contiguous(memory_format=torch.channels_last)
    assert back.classes == tiny_splits.classes
