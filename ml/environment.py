"""Where and how a trial runs: device(s), precision, determinism, seeds, and a record of it all."""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import random
import subprocess
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ml.config import TrainConfig
from ml.precision import PrecisionProbe, cpu_precision

REPO_DIR = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    device_ids: tuple[int, ...]  # CUDA devices used; () on the CPU
    parallel: str  # "none", "dataparallel" or "ddp" (then `device` is this rank's)
    precision: str  # "bf16" or "fp32": what autocast actually does
    precision_probe: PrecisionProbe | None = None  # the measurement behind "auto" on a CPU

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")


def select_runtime(cfg: TrainConfig, device_ids: list[int] | None) -> Runtime:
    """device_ids None = every visible CUDA device, or the CPU when there is none; [] = the CPU."""
    if cfg.parallel == "ddp":
        raise ValueError(
            "parallel='ddp' runs one process per device, not in this process: "
            "ml.train.run_trial hands it to ml.distributed"
        )
    ids = cuda_devices(device_ids)
    if cfg.parallel == "none":
        ids = ids[:1]
    parallel = "dataparallel" if len(ids) > 1 else "none"
    device = torch.device("cuda", ids[0]) if ids else torch.device("cpu")
    precision, probe = precision_for(cfg, device)
    return Runtime(device, tuple(ids), parallel, precision, probe)


def cuda_devices(device_ids: list[int] | None) -> list[int]:
    """The CUDA ids a trial asks for: None = every visible one (none without CUDA); [] = none, the CPU."""
    ids = _visible_cuda_devices() if device_ids is None else list(device_ids)
    if ids and not torch.cuda.is_available():
        raise ValueError(f"device_ids {ids} given but CUDA is not available")
    return ids


def _visible_cuda_devices() -> list[int]:
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


def precision_for(
    cfg: TrainConfig, device: torch.device, training: bool = True
) -> tuple[str, PrecisionProbe | None]:
    """What `cfg.precision` means for its network on `device` ("bf16" or "fp32"), and the
    measurement that decided, if one did: "auto" on a CPU with AMX or AVX512-BF16 times both
    (ml.precision); `training` False times inference (the server's choice)."""
    if cfg.precision != "auto":
        return cfg.precision, None
    if device.type == "cuda":
        return ("bf16" if torch.cuda.is_bf16_supported() else "fp32"), None
    if not cpu_has_fast_bf16():
        return "fp32", None
    probe = cpu_precision(cfg, cfg.batch_size, training)
    return probe.precision, probe


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """AMX or AVX512-BF16: without them CPU bf16 is emulated and slower than fp32 (with them it
    may still be slower: ml.precision measures)."""
    return bool({"amx_bf16", "avx512_bf16"} & set((_cpuinfo("flags") or "").split()))


@functools.cache
def _cpuinfo(field: str) -> str | None:
    """A field of the first CPU in /proc/cpuinfo (Linux); None elsewhere."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.split(":", 1)[0].strip() == field:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


# --- reproducibility -----------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


@contextlib.contextmanager
def determinism(enabled: bool, device: torch.device) -> Iterator[None]:
    """Deterministic kernels for the trial only: the flags are process-wide and a worker runs many trials."""
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    if enabled and device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it to be deterministic
    torch.use_deterministic_algorithms(enabled)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = not enabled  # fixed shapes: autotuning pays off
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """Every random stream a trial draws from, as checkpoint-safe values."""
    np_state = np.random.get_state()
    return {
        "data_generator": generator.get_state(),
        "data_generator_device": generator.device.type,
        "torch_cpu": torch.get_rng_state(),
        "torch_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }


def restore_rng_state(state: dict[str, Any], generator: torch.Generator) -> bool:
    """Returns False when `generator` lives on another device type than the saved one (a trial
    moved between a GPU and a CPU worker): its state cannot carry over, and the caller reseeds it."""
    torch.set_rng_state(state["torch_cpu"])
    for index, cuda_state in enumerate(state["torch_cuda"][: torch.cuda.device_count()]):
        torch.cuda.set_rng_state(cuda_state, index)
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if state["data_generator_device"] != generator.device.type:
        return False
    generator.set_state(state["data_generator"])
    return True


# --- record --------------------------------------------------------------------------------------


def describe(
    runtime: Runtime, cfg: TrainConfig, compile_seconds: float | None, compiled: bool
) -> dict[str, Any]:
    """What a result was produced with; plain values only (it goes into checkpoints and the database)."""
    return {
        "torch": str(torch.__version__),  # a str subclass that weights_only loading rejects
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if runtime.device.type == "cuda" else None,
        "python": platform.python_version(),
        "device": device_name(runtime.device),
        "device_type": runtime.device.type,
        "device_ids": list(runtime.device_ids),
        "parallel": runtime.parallel,
        "precision": runtime.precision,
        "precision_probe": asdict(runtime.precision_probe) if runtime.precision_probe else None,
        "channels_last": cfg.channels_last,
        "compiled": compiled,
        "compile_seconds": compile_seconds,
        "deterministic": cfg.deterministic,
        "threads": torch.get_num_threads(),
        "git_sha": git_sha(),
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return _cpuinfo("model name") or platform.processor() or "cpu"


@functools.cache
def git_sha() -> str | None:
    """The checkout's commit, or None outside a git checkout / without git."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_DIR, capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None
