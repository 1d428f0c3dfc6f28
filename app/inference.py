"""A checkpoint made servable: loaded, normalised exactly as the trainer evaluated, run batched.

Everything here runs in worker threads, never on the event loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from app.registry import ModelInfo
from ml.checkpoint import load_for_inference


@dataclass(frozen=True)
class LoadedModel:
    info: ModelInfo
    module: nn.Module
    classes: tuple[str, ...]
    mean: torch.Tensor  # 1x3x1x1, on device
    std: torch.Tensor
    device: torch.device
    autocast_dtype: torch.dtype | None  # bf16 where the hardware makes it faster, else None (fp32)


def pick_device() -> torch.device:
    return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 only where it is faster than fp32: CUDA, and CPUs with AMX tiles (not AVX2/AVX-512 only)."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if torch.cpu._is_amx_tile_supported() else None


def load_model(
    info: ModelInfo, artifacts_dir: Path, device: torch.device, warmup_sizes: tuple[int, ...]
) -> LoadedModel:
    module, meta = load_for_inference(artifacts_dir / info.path, device)
    module = module.to(device=device, memory_format=torch.channels_last).eval()
    model = LoadedModel(
        info=info,
        module=module,
        classes=tuple(meta["classes"]),
        mean=_channel_tensor(meta["mean"], device),
        std=_channel_tensor(meta["std"], device),
        device=device,
        autocast_dtype=autocast_dtype(device),
    )
    for size in warmup_sizes:  # first calls per shape pick kernels; pay that here, not in a request
        predict_proba(model, np.zeros((size, 32, 32, 3), np.uint8), np.zeros(size, bool))
    return model


def _channel_tensor(values: list[float] | tuple[float, ...], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=device).view(1, 3, 1, 1)


def preprocess(images: np.ndarray, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 N x H x W x 3 -> normalised float N x 3 x H x W (channels_last), as in evaluation."""
    x = torch.from_numpy(images).to(mean.device, non_blocking=True).permute(0, 3, 1, 2).float()
    return ((x / 255.0 - mean) / std).contiguous(memory_format=torch.channels_last)


@torch.inference_mode()
def predict_proba(model: LoadedModel, images: np.ndarray, tta: np.ndarray) -> np.ndarray:
    """Class probabilities N x C; rows with tta[i] average the image's and its mirror's softmax."""
    x = preprocess(images, model.mean, model.std)
    flipped = torch.from_numpy(np.flatnonzero(tta)).to(model.device)
    if len(flipped):
        x = torch.cat([x, x[flipped].flip(3)])  # one forward pass for originals and mirrors
    with torch.autocast(
        model.device.type,
        dtype=model.autocast_dtype or torch.float32,
        enabled=model.autocast_dtype is not None,
    ):
        logits = model.module(x)
    probs = torch.softmax(logits.float(), dim=1)
    n = len(images)
    out = probs[:n].clone()
    if len(flipped):
        out[flipped] = (probs[flipped] + probs[n:]) / 2
    return out.cpu().numpy()
