"""A checkpoint made servable: loaded, then run batched through the trainer's own forward pass.

`ml.evaluate.predict_logits` normalises and applies TTA exactly as validation and test accuracy
were computed, so a served prediction is the evaluated model's. Everything here runs in worker
threads, never on the event loop.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from app.store.artifacts import ArtifactStore
from app.store.registry import ModelInfo
from ml.checkpoint import load_for_inference
from ml.config import TrainConfig
from ml.environment import precision_for
from ml.evaluate import normalize, predict_logits

log = logging.getLogger("sweepserve.inference")
TRACE_BATCH = 8  # the example batch the serving graph is traced with; any batch size runs after


@dataclass(frozen=True)
class LoadedModel:
    info: ModelInfo
    module: nn.Module
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    device: torch.device
    precision: str  # "bf16" where the hardware makes it faster (CUDA, AMX, AVX512-BF16)


def pick_device() -> torch.device:
    return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")


def load_model(
    info: ModelInfo, store: ArtifactStore, device: torch.device, warmup_sizes: tuple[int, ...]
) -> LoadedModel:
    # The store checks the bytes against the size and sha256 recorded at registration (and, for
    # object storage, downloads them into its cache) before torch reads them.
    module, meta = load_for_inference(store.get(info.blob), device)
    precision = _precision(meta["config"], device)
    mean, std = tuple(meta["mean"]), tuple(meta["std"])
    module = module.to(memory_format=torch.channels_last)
    model = LoadedModel(
        info=info,
        module=serving_graph(module, mean, std, precision, device),
        classes=tuple(meta["classes"]),
        mean=mean,
        std=std,
        device=device,
        precision=precision,
    )
    for size in warmup_sizes:  # the first call per shape picks kernels: pay that here, not in a request
        predict_proba(model, np.zeros((size, 32, 32, 3), np.uint8), tta=False)
    return model


@torch.inference_mode()
def serving_graph(
    module: nn.Module, mean: tuple[float, ...], std: tuple[float, ...], precision: str, device: torch.device
) -> nn.Module:
    """The module traced and frozen into a TorchScript graph (BatchNorm folded into the convolutions,
    bf16 casts baked in); the eager module when tracing fails.

    Why: an eager forward dispatches each of its ~60 ops from Python and needs the GIL back after
    every kernel; while the event loop thread parses requests, each op waits out a GIL switch
    interval. The traced graph runs in C++ without the GIL. `bench/serving_gil.py` on 2 CPU cores,
    batch 12, bf16: eager 15 ms alone, 466 ms beside a busy Python thread; traced 11 and 57 ms.
    """
    example = normalize(torch.zeros(TRACE_BATCH, 3, 32, 32, dtype=torch.uint8, device=device), mean, std)
    example = example.contiguous(memory_format=torch.channels_last)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, not removed
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                return torch.jit.freeze(torch.jit.trace(module, example))
    except Exception as exc:  # an architecture the tracer cannot follow still serves, eagerly
        log.warning("serving the eager module: tracing failed (%s)", exc)
        return module


def _precision(config: dict, device: torch.device) -> str:
    # The trainer's rule ("auto": bf16 only where it measures faster), timed on forward passes.
    return precision_for(TrainConfig.model_validate(config), device, training=False)[0]


@torch.inference_mode()
def predict_proba(model: LoadedModel, images: np.ndarray, tta: bool) -> np.ndarray:
    """Class probabilities N x C of uint8 images N x 32 x 32 x 3 (RGB)."""
    # NHWC -> NCHW as a view: the memory already is channels_last, so no copy is made.
    x = torch.from_numpy(images).permute(0, 3, 1, 2).to(model.device)
    # The graph is already frozen; the profiling executor would re-specialise it for every new batch
    # size (10-20 ms more on first calls) and measured slower after that too (8 vs 10 ms at 8 images).
    with torch.jit.optimized_execution(False):
        logits = predict_logits(model.module, x, model.mean, model.std, tta, True, model.precision)
    return torch.softmax(logits, dim=1).cpu().numpy()
