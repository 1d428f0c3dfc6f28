"""Train one trial: `run_trial` is the entry point of the ML engine (a worker calls it; so can a
notebook). It runs the epoch loop of `ml.engine` in this process (CPU, one GPU, or several GPUs
with DataParallel), or with parallel="ddp" in one process per device (`ml.distributed`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ml.config import TrainConfig
from ml.data import Splits
from ml.distributed import run_ddp_trial
from ml.engine import EpochMetrics, Team, TrialAborted, TrialHooks, TrialResult, train_process
from ml.environment import select_runtime
from ml.status import Decision

# What a caller needs besides run_trial, importable from here.
__all__ = ["Decision", "EpochMetrics", "TrialAborted", "TrialHooks", "TrialResult", "run_trial"]


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
