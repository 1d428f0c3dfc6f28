"""Forward passes for evaluation and serving: uint8 images in, logits out.

The predictor calls `predict_logits` too, so served predictions are computed exactly as
validation and test accuracy were.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ml.augment import normalize


def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    tta: bool,
    channels_last: bool = True,
    precision: str = "fp32",
) -> torch.Tensor:
    """Float32 logits of a uint8 NCHW batch already on the model's device; with `tta`, the average
    of the logits of each image and its mirror. Call with the model in eval mode, under
    torch.inference_mode()."""
    x = normalize(images, mean, std)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        logits = model(x).float()
        if tta:
            logits = (logits + model(x.flip(3)).float()) / 2
    return logits


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    tta: bool,
    channels_last: bool = True,
    precision: str = "fp32",
) -> tuple[float, float]:
    """(mean cross-entropy without label smoothing, accuracy) of `model` on the uint8 set x, y."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=x.device, dtype=torch.float64)
    correct = torch.zeros((), device=x.device, dtype=torch.int64)
    for start in range(0, len(y), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        logits = predict_logits(model, xb, mean, std, tta, channels_last, precision)
        loss_sum += F.cross_entropy(logits, yb, reduction="sum")
        correct += (logits.argmax(1) == yb).sum()
    model.train(was_training)
    n = max(len(y), 1)
    return loss_sum.item() / n, correct.item() / n  # one device sync per evaluation
