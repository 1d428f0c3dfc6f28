"""A checkpoint made servable: loaded, then run batched through the trainer's own forward pass.

`ml.evaluate.predict_logits` normalises and applies TTA exactly as validation and test accuracy
were computed, so a served prediction is the evaluated model's. Everything here runs in worker
threads, never on the event loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from app.registry import ModelInfo
from ml.checkpoint import load_for_inference
from ml.config import TrainConfig
from ml.environment import select_runtime
from ml.evaluate import predict_logits


@dataclass(frozen=True)
class LoadedModel:
    info: ModelInfo
    module: nn.Module
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    device: torch.device
    precision: str  # "bf16" where the hardware makes it faster (CUDA, AMX), else "fp32"


def pick_device() -> torch.device:
    return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")


def load_model(
    info: ModelInfo, artifacts_dir: Path, device: torch.device, warmup_sizes: tuple[int, ...]
) -> LoadedModel:
    module, meta = load_for_inference(artifacts_dir / info.path, device)
    model = LoadedModel(
        info=info,
        module=module.to(memory_format=torch.channels_last),
        classes=tuple(meta["classes"]),
        mean=tuple(meta["mean"]),
        std=tuple(meta["std"]),
        device=device,
        precision=_precision(meta["config"], device),
    )
    for size in warmup_sizes:  # the first call per shape picks kernels: pay that here, not in a request
        predict_proba(model, np.zeros((size, 32, 32, 3), np.uint8), tta=False)
    return model


def _precision(config: dict, device: torch.device) -> str:
    # The trainer's rule (its "auto" means bf16 only where bf16 is fast), for one device.
    cfg = TrainConfig.model_validate(config).model_copy(update={"parallel": "none"})
    return select_runtime(cfg, [device.index or 0] if device.type == "cuda" else []).precision


@torch.inference_mode()
def predict_proba(model: LoadedModel, images: np.ndarray, tta: bool) -> np.ndarray:
    """Class probabilities N x C of uint8 images N x 32 x 32 x 3 (RGB)."""
    # NHWC -> NCHW as a view: the memory already is channels_last, so no copy is made.
    x = torch.from_numpy(images).permute(0, 3, 1, 2).to(model.device)
    logits = predict_logits(model.module, x, model.mean, model.std, tta, True, model.precision)
    return torch.softmax(logits, dim=1).cpu().numpy()
