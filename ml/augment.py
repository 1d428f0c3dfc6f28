"""Batch augmentation on the training device: whole uint8 batches, one seeded generator.

Same distributions as torchvision's RandomCrop(32, padding=4) (zero fill) and
RandomHorizontalFlip(p=0.5), without per-image Python or PIL in the hot path. Cutout
(DeVries & Taylor 2017) runs after normalisation, so the square is filled with the mean.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F

from ml.config import AugmentConfig

CROP_PADDING = 4


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 NCHW in [0, 255] -> float32 standardised per channel."""
    scale, shift = _affine(tuple(mean), tuple(std), x.device)
    return x.float() * scale + shift


@functools.lru_cache(maxsize=16)
def _affine(
    mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
) -> tuple[torch.Tensor, ...]:
    # Built once per device: a host-to-device copy every batch would stall the GPU queue.
    m = torch.tensor(mean, dtype=torch.float64)
    s = torch.tensor(std, dtype=torch.float64)
    scale, shift = 1.0 / (255.0 * s), -m / s
    return tuple(t.to(device=device, dtype=torch.float32).view(1, -1, 1, 1) for t in (scale, shift))


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Each image cropped back to its size from a zero-padded copy at a uniform offset in [0, 2*padding]."""
    n, _, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (n,), device=x.device, generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), device=x.device, generator=generator)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channels = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, channels, rows, cols]


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = torch.rand(x.shape[0], device=x.device, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def cutout(x: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Zero a size x size square per image, centred uniformly on the image and clipped at its edges."""
    n, _, h, w = x.shape
    cy = torch.randint(0, h, (n, 1), device=x.device, generator=generator)
    cx = torch.randint(0, w, (n, 1), device=x.device, generator=generator)
    ys = torch.arange(h, device=x.device)[None, :]
    xs = torch.arange(w, device=x.device)[None, :]
    in_rows = (ys >= cy - size // 2) & (ys < cy - size // 2 + size)
    in_cols = (xs >= cx - size // 2) & (xs < cx - size // 2 + size)
    keep = ~(in_rows[:, :, None] & in_cols[:, None, :])
    return x * keep[:, None, :, :].to(x.dtype)


def augment_batch(
    x: torch.Tensor,
    cfg: AugmentConfig,
    mean: Sequence[float],
    std: Sequence[float],
    generator: torch.Generator,
) -> torch.Tensor:
    """uint8 batch -> augmented, normalised float batch."""
    if cfg.crop:
        x = random_crop(x, CROP_PADDING, generator)
    if cfg.flip:
        x = random_flip(x, generator)
    out = normalize(x, mean, std)
    if cfg.cutout > 0:
        out = cutout(out, cfg.cutout, generator)
    return out


def train_batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    cfg: AugmentConfig,
    mean: Sequence[float],
    std: Sequence[float],
    generator: torch.Generator,
    channels_last: bool = True,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of shuffled, augmented batches of the device-resident set (see `steps_per_epoch`)."""
    order = torch.randperm(len(y), device=x.device, generator=generator)
    size = min(batch_size, len(y))
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    for step in range(steps_per_epoch(len(y), batch_size)):
        idx = order[step * size : (step + 1) * size]
        images = augment_batch(x[idx], cfg, mean, std, generator)
        yield images.contiguous(memory_format=memory_format), y[idx]


def steps_per_epoch(n_images: int, batch_size: int) -> int:
    # The ragged last batch is dropped (a different one each epoch): a batch of one image breaks
    # batch norm, and equal batches keep per-step schedules exact. A set smaller than one batch
    # is one batch.
    return max(1, n_images // batch_size)
