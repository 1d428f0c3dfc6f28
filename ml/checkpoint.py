"""Checkpoint files: written atomically, read with weights_only=True.

Every checkpoint (best.pt, last.pt, or one built with `inference_checkpoint`) holds
    format     int
    model      state dict of the weights that were evaluated (the EMA weights when EMA is on)
    metadata   plain values: config (TrainConfig as JSON), classes, mean, std, and whatever the
               trainer (seed, environment, epoch, val_accuracy) or caller (job/trial ids) adds
last.pt adds the training state for resuming (see ml.trial_state).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ml.atomic import atomic_write
from ml.config import TrainConfig
from ml.data import MEAN, STD
from ml.models import build_model

FORMAT = 1


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    """torch.save into a temp file beside `path`, fsync, rename: a crash leaves the old file or the new."""
    # Serialised in memory first: torch.save straight into a file turns a full disk into an opaque
    # "RuntimeError: [enforce fail at inline_container.cc] unexpected pos"; a plain write says ENOSPC.
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(Path(path), lambda f: f.write(buffer.getbuffer()))


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    return torch.load(Path(path), map_location=map_location, weights_only=True)


def inference_checkpoint(
    model_state: dict[str, torch.Tensor],
    cfg: TrainConfig,
    classes: Sequence[str],
    mean: Sequence[float] = MEAN,
    std: Sequence[float] = STD,
    **metadata: Any,
) -> dict[str, Any]:
    """The smallest checkpoint `load_for_inference` accepts; `metadata` must be plain values."""
    return {
        "format": FORMAT,
        "model": model_state,
        "metadata": {
            "config": cfg.model_dump(mode="json"),
            "classes": list(classes),
            "mean": list(mean),
            "std": list(std),
            **metadata,
        },
    }


def load_for_inference(path: Path, device: str | torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """(model on `device` in eval mode, metadata). Needs no network: ImageNet weights are not fetched."""
    ckpt = load_checkpoint(path, map_location="cpu")
    try:
        metadata = dict(ckpt["metadata"])
        cfg = TrainConfig.model_validate(metadata["config"]).model_copy(update={"pretrained": False})
        net = build_model(cfg, num_classes=len(metadata["classes"]), allow_download=False)
        net.load_state_dict(ckpt["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{path} is not a model checkpoint of this project: {exc}") from exc
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    net = net.to(device=device, memory_format=memory_format).eval()
    return net, metadata
