"""`run_trial` end to end on tiny synthetic data: it learns, checkpoints, resumes exactly, reproduces."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import torch

import ml.setup
from ml import environment
from ml.checkpoint import load_checkpoint, load_for_inference, save_atomic
from ml.config import TrainConfig
from ml.data import MEAN, Splits
from ml.evaluate import evaluate
from ml.precision import PrecisionProbe
from ml.train import Decision, EpochMetrics, TrialAborted, TrialHooks, TrialResult, run_trial
from ml.trial_state import SplitMismatch

pytestmark = pytest.mark.slow

# torchvision's ImageNet stem is the fastest ResNet-18 on a CPU; AdamW at 1e-3 separates the
# synthetic classes within two epochs of 15 batches. EMA, label smoothing, cutout and TTA stay on.
FAST = TrainConfig(
    arch="resnet18_imagenet",
    epochs=2,
    batch_size=16,
    optimizer="adamw",
    lr=1e-3,
    weight_decay=0.05,
    ema_decay=0.9,
    deterministic=True,
    warmup_min_steps=0,
)

TIMING = ("seconds", "images_per_second")


def _curve(history: list[EpochMetrics]) -> list[dict[str, Any]]:
    """The metrics that must reproduce exactly; wall-clock timings never do."""
    return [{k: v for k, v in asdict(m).items() if k not in TIMING} for m in history]


def _assert_same_state(a: Any, b: Any, where: str = "") -> None:
    """Equal nested checkpoint values: tensors bit for bit, everything else by ==."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same_state(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.fixture(scope="module")
def reference(tiny_splits: Splits, tmp_path_factory: pytest.TempPathFactory) -> tuple[TrialResult, Path]:
    """The uninterrupted 2-epoch run the other tests compare against."""
    torch.set_num_threads(1)
    out_dir = tmp_path_factory.mktemp("reference")
    return run_trial(
        FAST, tiny_splits, out_dir, device_ids=[], metadata={"job_id": 7, "trial_id": 9}
    ), out_dir


def test_training_learns_the_synthetic_classes(reference: tuple[TrialResult, Path]) -> None:
    result, out_dir = reference
    assert result.status == "succeeded"
    assert [m.epoch for m in result.history] == [1, 2]
    assert result.best_val_accuracy is not None and result.best_val_accuracy > 0.5  # chance is 0.1
    assert result.test_accuracy is not None and result.test_accuracy > 0.5
    assert result.history[-1].train_loss < result.history[0].train_loss
    assert result.best_checkpoint == out_dir / "best.pt"
    assert sorted(p.name for p in out_dir.iterdir()) == ["best.pt", "last.pt"]
    env = result.environment
    assert env["device_type"] == "cpu" and env["precision"] in ("fp32", "bf16") and env["torch"]


def test_checkpoints_hold_the_evaluated_weights_and_plain_metadata(
    reference: tuple[TrialResult, Path], tiny_splits: Splits
) -> None:
    result, out_dir = reference
    best, last = load_checkpoint(out_dir / "best.pt"), load_checkpoint(out_dir / "last.pt")
    assert best["metadata"]["epoch"] == result.best_epoch
    assert best["metadata"]["job_id"] == 7 and best["metadata"]["trial_id"] == 9
    assert best["metadata"]["classes"] == tiny_splits.classes and best["metadata"]["mean"] == list(MEAN)
    assert last["metadata"]["epoch"] == 2 and len(last["history"]) == 2
    assert {"optimizer", "scheduler", "rng", "train_model", "ema_updates"} <= last.keys()
    # EMA on: the served weights are the average, not the last training weights ...
    assert not torch.equal(last["model"]["conv1.weight"], last["train_model"]["conv1.weight"])
    # ... and they are the weights that scored the recorded validation accuracy.
    model, meta = load_for_inference(out_dir / "best.pt", "cpu")
    _, accuracy = evaluate(
        model, tiny_splits.val_x, tiny_splits.val_y, 64, meta["mean"], meta["std"], FAST.tta
    )
    assert accuracy == result.best_val_accuracy


class StopDuringEpoch(TrialHooks):
    """Lets epoch `epoch` start, then reports a lost lease at the second poll of that epoch."""

    def __init__(self, epoch: int) -> None:
        self.epoch, self.seen, self.polls = epoch, 0, 0

    def epoch_end(self, metrics: EpochMetrics, history: list[EpochMetrics]) -> Decision:
        self.seen = metrics.epoch
        return Decision.CONTINUE

    def should_stop(self) -> bool:
        if self.seen == self.epoch - 1:
            self.polls += 1
        return self.polls >= 2


class Recorder(TrialHooks):
    def __init__(self) -> None:
        self.restored_history: list[EpochMetrics] | None = None
        self.ends: list[int] = []

    def restored(self, history: list[EpochMetrics]) -> None:
        self.restored_history = history

    def epoch_end(self, metrics: EpochMetrics, history: list[EpochMetrics]) -> Decision:
        self.ends.append(metrics.epoch)
        return Decision.CONTINUE


def test_resume_after_an_abort_mid_epoch_equals_the_uninterrupted_run(
    reference: tuple[TrialResult, Path], tiny_splits: Splits, tmp_path: Path
) -> None:
    expected, reference_dir = reference
    with pytest.raises(TrialAborted):
        run_trial(FAST, tiny_splits, tmp_path, StopDuringEpoch(epoch=2), device_ids=[])
    interrupted = load_checkpoint(tmp_path / "last.pt")
    assert interrupted["metadata"]["epoch"] == 1  # the half-done epoch 2 left no trace
    # A second run with the same seed reproduces epoch 1 exactly.
    assert _curve([EpochMetrics(**m) for m in interrupted["history"]]) == _curve(expected.history[:1])

    hooks = Recorder()
    resumed = run_trial(FAST, tiny_splits, tmp_path, hooks, device_ids=[])
    assert hooks.restored_history is not None and [m.epoch for m in hooks.restored_history] == [1]
    assert hooks.ends == [2]
    assert _curve(resumed.history) == _curve(expected.history)
    assert resumed.test_accuracy == expected.test_accuracy
    # Weights, EMA, optimizer moments, scheduler position and every random stream agree bit for bit.
    ours, theirs = load_checkpoint(tmp_path / "last.pt"), load_checkpoint(reference_dir / "last.pt")
    for key in ("model", "train_model", "ema_updates", "optimizer", "scheduler", "rng"):
        _assert_same_state(ours[key], theirs[key], key)


def test_resume_after_a_crash_between_checkpoint_and_report(micro_splits: Splits, tmp_path: Path) -> None:
    class CrashAfterFirstEpoch(TrialHooks):
        def epoch_end(self, metrics: EpochMetrics, history: list[EpochMetrics]) -> Decision:
            raise KeyboardInterrupt("worker killed before it recorded the epoch")

    cfg = TrainConfig(arch="resnet18_imagenet", epochs=2, batch_size=10, ema_decay=0.9)
    with pytest.raises(KeyboardInterrupt):
        run_trial(cfg, micro_splits, tmp_path, CrashAfterFirstEpoch(), device_ids=[])
    first = load_checkpoint(tmp_path / "last.pt")["history"]
    (tmp_path / "best.pt").unlink()  # as if killed between writing last.pt and best.pt

    class CheckBestRestored(Recorder):
        def restored(self, history: list[EpochMetrics]) -> None:
            super().restored(history)
            self.best_epoch = load_checkpoint(tmp_path / "best.pt")["metadata"]["epoch"]

    hooks = CheckBestRestored()
    resumed = run_trial(cfg, micro_splits, tmp_path, hooks, device_ids=[])
    assert hooks.best_epoch == 1  # rebuilt from last.pt before training went on
    assert hooks.restored_history is not None and [asdict(m) for m in hooks.restored_history] == first
    assert hooks.ends == [2] and [m.epoch for m in resumed.history] == [1, 2]


def test_a_finished_trial_is_not_trained_again(
    reference: tuple[TrialResult, Path], tiny_splits: Splits
) -> None:
    expected, out_dir = reference
    hooks = Recorder()
    again = run_trial(FAST, tiny_splits, out_dir, hooks, device_ids=[])
    assert hooks.ends == [] and hooks.restored_history is not None and len(hooks.restored_history) == 2
    assert again.status == "succeeded" and again.test_accuracy == expected.test_accuracy
    assert _curve(again.history) == _curve(expected.history)


def test_another_config_does_not_resume_a_checkpoint(
    reference: tuple[TrialResult, Path], tiny_splits: Splits
) -> None:
    with pytest.raises(ValueError, match="another config"):
        run_trial(FAST.model_copy(update={"lr": 0.5}), tiny_splits, reference[1], device_ids=[])


def test_pruning_keeps_the_curve_and_tests_the_best_checkpoint(
    reference: tuple[TrialResult, Path], tiny_splits: Splits, tmp_path: Path
) -> None:
    class PruneAtOnce(TrialHooks):
        def epoch_end(self, metrics: EpochMetrics, history: list[EpochMetrics]) -> Decision:
            return Decision.PRUNE

    other_seed = FAST.model_copy(update={"seed": 1})
    result = run_trial(other_seed, tiny_splits, tmp_path, PruneAtOnce(), device_ids=[])
    assert result.status == "pruned" and len(result.history) == 1 and result.best_epoch == 1
    assert result.test_accuracy is not None and result.best_checkpoint == tmp_path / "best.pt"
    # Another seed is another run: the same-seed agreement above is not an accident.
    assert _curve(result.history) != _curve(reference[0].history[:1])


def test_cancel_skips_the_test_evaluation(micro_splits: Splits, tmp_path: Path) -> None:
    class Cancel(TrialHooks):
        def epoch_end(self, metrics: EpochMetrics, history: list[EpochMetrics]) -> Decision:
            return Decision.CANCEL

    cfg = TrainConfig(arch="resnet18_imagenet", epochs=3, batch_size=10, ema_decay=0)
    result = run_trial(cfg, micro_splits, tmp_path, Cancel(), device_ids=[])
    assert result.status == "cancelled" and len(result.history) == 1 and result.test_accuracy is None


def test_a_paused_trial_is_untested_and_its_resume_decides_before_training(
    micro_splits: Splits, tmp_path: Path
) -> None:
    class PauseAtOnce(TrialHooks):
        def epoch_end(self, metrics: EpochMetrics, history: list[EpochMetrics]) -> Decision:
            return Decision.PAUSE

    seen: list[int] = []

    class PruneOnResume(TrialHooks):
        def restored(self, history: list[EpochMetrics]) -> Decision:
            seen.append(len(history))
            return Decision.PRUNE

        def epoch_end(self, metrics: EpochMetrics, history: list[EpochMetrics]) -> Decision:
            raise AssertionError("a trial pruned on resume trains no more epochs")

    cfg = TrainConfig(arch="resnet18_imagenet", epochs=3, batch_size=10, ema_decay=0)
    paused = run_trial(cfg, micro_splits, tmp_path, PauseAtOnce(), device_ids=[])
    assert paused.status == "queued" and len(paused.history) == 1 and paused.test_accuracy is None
    assert (tmp_path / "last.pt").is_file()
    resumed = run_trial(cfg, micro_splits, tmp_path, PruneOnResume(), device_ids=[])
    assert seen == [1]
    assert resumed.status == "pruned" and _curve(resumed.history) == _curve(paused.history)
    assert resumed.test_accuracy is not None  # a pruned trial is tested once on its best.pt


def test_nan_loss_raises_and_keeps_the_last_good_checkpoint(
    micro_splits: Splits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_batches = ml.setup.train_batches
    epochs_started = []

    def poisoned(*args: Any, **kwargs: Any) -> Any:
        epochs_started.append(1)
        for i, (x, y) in enumerate(real_batches(*args, **kwargs), start=1):
            yield (x * float("nan") if len(epochs_started) == 2 and i == 2 else x), y

    monkeypatch.setattr(ml.setup, "train_batches", poisoned)  # TrialSetup.epoch_batches calls it
    cfg = TrainConfig(arch="resnet18_imagenet", epochs=3, batch_size=5, ema_decay=0)
    with pytest.raises(FloatingPointError, match="loss became NaN at epoch 2 batch 2"):
        run_trial(cfg, micro_splits, tmp_path, device_ids=[])
    assert load_checkpoint(tmp_path / "last.pt")["metadata"]["epoch"] == 1


def test_group_norm_cifar_stem_trains_a_step(micro_splits: Splits, tmp_path: Path) -> None:
    cfg = TrainConfig(arch="resnet18", norm="group", hidden_units=32, epochs=1, batch_size=20, tta=False)
    result = run_trial(cfg, micro_splits, tmp_path, device_ids=[])
    assert result.status == "succeeded" and result.history[0].train_loss > 0


def _rss_bytes() -> int:
    """Resident memory after glibc returns freed heap pages: leaks, not allocator caching."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_many_trials_in_one_process_do_not_grow_memory(micro_splits: Splits, tmp_path: Path) -> None:
    cfg = TrainConfig(arch="resnet18_imagenet", epochs=1, batch_size=10, ema_decay=0.9)
    cuda = torch.cuda.is_available()
    readings = []
    for i in range(10):
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        out_dir = tmp_path / str(i)
        run_trial(cfg.model_copy(update={"seed": i}), micro_splits, out_dir, device_ids=[0] if cuda else [])
        shutil.rmtree(out_dir)
        readings.append((_rss_bytes(), torch.cuda.max_memory_allocated() if cuda else 0))
    warm_rss, warm_gpu = readings[2]
    growth = max(rss for rss, _ in readings[3:]) - warm_rss
    assert growth < 40 * 2**20, [rss // 2**20 for rss, _ in readings]
    if cuda:
        assert max(gpu for _, gpu in readings[3:]) <= warm_gpu * 1.05 + 2**20


def test_compiled_trial_reports_compile_time_apart(
    micro_splits: Splits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Dynamo's real graph capture with the eager backend: inductor's C++ code generation takes
    # minutes on two cores, and its correctness is PyTorch's to test, not ours.
    compile_calls = []

    def eager_compile(module: torch.nn.Module, **kwargs: Any) -> Any:
        compile_calls.append(module)
        return torch._dynamo.optimize("eager")(module)

    monkeypatch.setattr(torch, "compile", eager_compile)
    cfg = TrainConfig(arch="resnet18_imagenet", epochs=1, batch_size=10, ema_decay=0.9, compile=True)
    result = run_trial(cfg, micro_splits, tmp_path, device_ids=[])
    assert len(compile_calls) == 2  # the trained network and its EMA copy
    assert result.environment["compiled"] is True and result.environment["compile_seconds"] > 0
    assert result.status == "succeeded" and result.test_accuracy is not None
    model, _ = load_for_inference(tmp_path / "best.pt", "cpu")  # no _orig_mod. prefixes in the weights
    assert not model.training


def test_resume_refuses_another_validation_split(micro_splits: Splits, tmp_path: Path) -> None:
    cfg = TrainConfig(arch="resnet18_imagenet", epochs=1, batch_size=10)
    run_trial(cfg, micro_splits, tmp_path, device_ids=[])
    written = load_checkpoint(tmp_path / "last.pt")["metadata"]["val_fingerprint"]
    assert written == micro_splits.val_fingerprint
    other = dataclasses.replace(micro_splits, val_fingerprint="0" * 64)
    with pytest.raises(SplitMismatch, match="another validation split"):
        run_trial(cfg, other, tmp_path, device_ids=[])


def test_a_checkpoint_from_before_the_new_fields_resumes(micro_splits: Splits, tmp_path: Path) -> None:
    cfg = TrainConfig(arch="resnet18_imagenet", epochs=1, batch_size=10, lr=0.05)
    first = run_trial(cfg, micro_splits, tmp_path, device_ids=[])
    last = load_checkpoint(tmp_path / "last.pt")
    for key in ("preset", "lr_reference_batch", "warmup_min_steps"):
        del last["metadata"]["config"][key]
    del last["metadata"]["val_fingerprint"]
    save_atomic(last, tmp_path / "last.pt")
    hooks = Recorder()
    again = run_trial(cfg, micro_splits, tmp_path, hooks, device_ids=[])
    assert hooks.ends == [] and again.test_accuracy == first.test_accuracy  # resumed, not retrained


def test_a_resumed_auto_trial_keeps_the_precision_it_started_in(
    micro_splits: Splits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    measured = {"now": PrecisionProbe(fp32_seconds=1.0, bf16_seconds=2.0, batch=10, training=True)}
    monkeypatch.setattr(environment, "cpu_has_fast_bf16", lambda: True)
    monkeypatch.setattr(environment, "cpu_precision", lambda cfg, batch, training: measured["now"])
    cfg = TrainConfig(arch="resnet18_imagenet", epochs=2, batch_size=10, ema_decay=0.9)
    with pytest.raises(TrialAborted):
        run_trial(cfg, micro_splits, tmp_path / "trial", StopDuringEpoch(epoch=2), device_ids=[])
    assert load_checkpoint(tmp_path / "trial" / "last.pt")["metadata"]["environment"]["precision"] == "fp32"

    measured["now"] = PrecisionProbe(fp32_seconds=2.0, bf16_seconds=1.0, batch=10, training=True)
    resumed = run_trial(cfg, micro_splits, tmp_path / "trial", device_ids=[])
    assert [m.epoch for m in resumed.history] == [1, 2] and resumed.environment["precision"] == "fp32"
    fresh = run_trial(cfg.model_copy(update={"epochs": 1}), micro_splits, tmp_path / "fresh", device_ids=[])
    assert fresh.environment["precision"] == "bf16"  # a new trial follows the new measurement
    assert fresh.environment["precision_probe"]["bf16_seconds"] == 1.0
