"""Forward passes for evaluation and serving: uint8 images in, logits out.

The predictor calls `predict_logits` too, so served predictions are computed exactly as
validation and test accuracy were.

Test-time augmentation (TTA): `tta` averages the logits of each image and its mirror;
`translate_px` = n > 0 also evaluates copies shifted by n px down-right and up-left (the uncovered
border reflected, as `crop_fill: reflect` trains), each with its mirror when `tta`, and averages
the shifted copies' logits with half the weight of the unshifted ones (the fast published
CIFAR-10 runs' "mirror + translate" TTA).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ml.augment import normalize, translate


def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    tta: bool,
    channels_last: bool = True,
    precision: str = "fp32",
    translate_px: int = 0,
) -> torch.Tensor:
    """Float32 logits of a uint8 NCHW batch already on the model's device, with the TTA of the
    module docstring. Call with the model in eval mode, under torch.inference_mode()."""
    x = normalize(images, mean, std)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        logits = _mirrored(model, x, tta, memory_format)
        if translate_px > 0:
            shifts = [torch.full((len(x),), s, device=x.device) for s in (translate_px, -translate_px)]
            shifted = [_mirrored(model, translate(x, s, s, "reflect"), tta, memory_format) for s in shifts]
            logits = 0.5 * logits + 0.25 * (shifted[0] + shifted[1])
    return logits


def _mirrored(
    model: nn.Module, x: torch.Tensor, tta: bool, memory_format: torch.memory_format
) -> torch.Tensor:
    """Logits of x, averaged with those of its mirror when `tta`."""
    # Copied out at once: under CUDA graphs (compile_mode reduce-overhead) the next call of the
    # model reuses the memory of this call's output.
    logits = model(x.contiguous(memory_format=memory_format)).float().clone()
    if tta:
        mirrored = model(x.flip(3).contiguous(memory_format=memory_format)).float()
        logits = (logits + mirrored) / 2
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
    translate_px: int = 0,
) -> tuple[float, float]:
    """(mean cross-entropy without label smoothing, accuracy) of `model` on the uint8 set x, y,
    with the TTA of `predict_logits`."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=x.device, dtype=torch.float64)
    correct = torch.zeros((), device=x.device, dtype=torch.int64)
    for start in range(0, len(y), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        logits = predict_logits(model, xb, mean, std, tta, channels_last, precision, translate_px)
        loss_sum += F.cross_entropy(logits, yb, reduction="sum")
        correct += (logits.argmax(1) == yb).sum()
    model.train(was_training)
    n = max(len(y), 1)
    return loss_sum.item() / n, correct.item() / n  # one device sync per evaluation
