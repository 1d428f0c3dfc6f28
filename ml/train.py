"""Train one trial: `run_trial` is the entry point of the ML engine (a worker calls it; so can a
notebook). It runs the epoch loop of `ml.engine` in this process (CPU, one GPU, or several GPUs
with DataParallel), or with parallel="ddp" in one process per device (`ml.distributed`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ml.checkpoint import load_checkpoint, load_for_inference
from ml.config import TrainConfig
from ml.data import MEAN, STD, Splits
from ml.distributed import run_ddp_trial
from ml.engine import EpochMetrics, Team, TrialAborted, TrialHooks, TrialResult, train_process
from ml.environment import select_runtime
from ml.evaluate import evaluate
from ml.status import Decision

# What a caller needs besides run_trial, importable from here.
__all__ = [
    "Decision",
    "EpochMetrics",
    "TrialAborted",
    "TrialHooks",
    "TrialResult",
    "run_trial",
    "score_on_test",
]


def run_trial(
    cfg: TrainConfig,
    splits: Splits,
    out_dir: Path,
    hooks: TrialHooks | None = None,
    device_ids: list[int] | None = None,
    metadata: dict[str, Any] | None = None,
    *,
    allow_download: bool = True,
) -> TrialResult:
    """Train `cfg` on `splits`, resuming from out_dir/last.pt when present (see module ml.trial_state).

    device_ids: None = every visible GPU (DataParallel when several) or the CPU; [] = the CPU.
    metadata: plain values stored in every checkpoint (e.g. job and trial ids).
    allow_download: whether pretrained ImageNet weights may be fetched.
    With parallel="ddp", one process per device trains (see ml.distributed) and this one relays hooks.
    Raises FloatingPointError on a NaN loss, TrialAborted, WeightsUnavailable.
    """
    hooks = hooks or TrialHooks()
    out_dir = Path(out_dir)
    if cfg.parallel == "ddp":
        return run_ddp_trial(
            cfg, splits, out_dir, hooks, device_ids, metadata or {}, allow_download=allow_download
        )
    runtime = select_runtime(cfg, device_ids)
    return train_process(cfg, splits, out_dir, hooks, runtime, metadata or {}, allow_download, Team())


def score_on_test(path: Path, splits: Splits, device_ids: list[int] | None = None) -> float:
    """Test accuracy of a trial's best.pt on `splits`' test images, evaluated as the trial would
    have (its TTA, batch and precision): data.test "best" tests a job's selected trial this way."""
    ckpt = load_checkpoint(path)
    cfg = TrainConfig.model_validate(ckpt["metadata"]["config"])
    runtime = select_runtime(cfg.model_copy(update={"parallel": "none"}), device_ids)
    net, _ = load_for_inference(path, runtime.device)
    args = (cfg.batch_size, MEAN, STD, cfg.tta, cfg.channels_last, runtime.precision, cfg.tta_translate)
    x, y = splits.test_x.to(runtime.device), splits.test_y.to(runtime.device)
    return evaluate(net, x, y, *args)[1]
