"""Batch augmentation on the training device: whole uint8 batches, one seeded generator.

Same distributions as torchvision's RandomCrop(32, padding=4) (zero fill, or `crop_fill: reflect`
for padding_mode="reflect") and RandomHorizontalFlip(p=0.5), without per-image Python or PIL in
the hot path. Cutout (DeVries & Taylor 2017) runs after normalisation, so the square is filled
with the mean. `flip_mode: alternate` mirrors each image on every other epoch instead of at
random (a seeded half on odd epochs, the other half on even ones): every epoch still shows half
the images mirrored, and no image goes unmirrored (or mirrored) for two epochs running.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence

import torch

from ml.config import AugmentConfig

_ALTERNATE_FLIP_STREAM = 0xF11B  # keeps the alternating-flip halves apart from other uses of the seed


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


def random_crop(
    x: torch.Tensor, padding: int, generator: torch.Generator, fill: str = "zeros"
) -> torch.Tensor:
    """Each image cropped back to its size from a padded copy at a uniform offset in [0, 2*padding]:
    a random translation by up to `padding` px each way, the uncovered border being zeros or
    (fill="reflect") the image mirrored at its edge."""
    n = x.shape[0]
    dy = torch.randint(0, 2 * padding + 1, (n,), device=x.device, generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), device=x.device, generator=generator)
    return translate(x, dy - padding, dx - padding, fill)


def translate(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, fill: str = "zeros") -> torch.Tensor:
    """Image i of the NCHW batch x shifted so that out[i, :, r, c] = x[i, :, r + dy[i], c + dx[i]];
    what falls outside the image reads 0 (fill "zeros") or the image mirrored at its edge ("reflect",
    torch's padding_mode="reflect": the edge pixel itself is not repeated). |dy|, |dx| < the image size."""
    n, channels, h, w = x.shape
    rows = dy[:, None] + torch.arange(h, device=x.device)  # (n, h) source row of each output row
    cols = dx[:, None] + torch.arange(w, device=x.device)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channel = torch.arange(channels, device=x.device)[None, :, None, None]
    if fill == "reflect":
        return x[batch, channel, _reflect(rows, h)[:, None, :, None], _reflect(cols, w)[:, None, None, :]]
    if fill != "zeros":
        raise ValueError(f"unknown fill {fill!r}: zeros or reflect")
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    moved = x[batch, channel, rows.clamp(0, h - 1)[:, None, :, None], cols.clamp(0, w - 1)[:, None, None, :]]
    return moved * inside[:, None].to(x.dtype)


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Indices in (-size, 2 * size - 1) folded into [0, size) by mirroring at the first and last pixel."""
    index = index.abs()
    return torch.where(index > size - 1, 2 * (size - 1) - index, index)


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = torch.rand(x.shape[0], device=x.device, generator=generator) < 0.5
    return mirror_where(x, flip)


def mirror_where(x: torch.Tensor, mirror: torch.Tensor) -> torch.Tensor:
    """Image i mirrored left-right where mirror[i] (bool) is true."""
    return torch.where(mirror[:, None, None, None], x.flip(3), x)


def alternating_flips(n_images: int, epoch: int, generator: torch.Generator) -> torch.Tensor:
    """Which of the n images `flip_mode: alternate` mirrors in `epoch` (1-based): a fixed half, drawn
    from the trial's seed (the generator's initial seed, so the same on resume and on every DDP rank),
    on odd epochs, the other half on even ones."""
    device = generator.device
    halves = torch.Generator(device=device).manual_seed(generator.initial_seed() ^ _ALTERNATE_FLIP_STREAM)
    first_half = torch.rand(n_images, device=device, generator=halves) < 0.5
    return first_half if epoch % 2 == 1 else ~first_half


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
    mirror: torch.Tensor | None = None,
) -> torch.Tensor:
    """uint8 batch -> augmented, normalised float batch. `mirror`: which images to flip (bool, one per
    image), as `flip_mode: alternate` decides; None draws each flip at random."""
    if cfg.crop:
        x = random_crop(x, cfg.crop_padding, generator, cfg.crop_fill)
    if cfg.flip:
        x = random_flip(x, generator) if mirror is None else mirror_where(x, mirror)
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
    epoch: int = 1,
    epoch_images: int | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Epoch `epoch` (1-based) of shuffled, augmented batches of the device-resident set (see
    `steps_per_epoch`), of its first `epoch_images` in a fresh random order when given (a new
    draw each epoch). Only `flip_mode: alternate` depends on the epoch."""
    order = torch.randperm(len(y), device=x.device, generator=generator)
    n = len(y) if epoch_images is None else min(epoch_images, len(y))
    size = min(batch_size, n)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    alternate = cfg.flip and cfg.flip_mode == "alternate"
    mirrored = alternating_flips(len(y), epoch, generator) if alternate else None
    for step in range(steps_per_epoch(n, batch_size)):
        idx = order[step * size : (step + 1) * size]
        mirror = None if mirrored is None else mirrored[idx]
        images = augment_batch(x[idx], cfg, mean, std, generator, mirror)
        yield images.contiguous(memory_format=memory_format), y[idx]


def steps_per_epoch(n_images: int, batch_size: int) -> int:
    # The ragged last batch is dropped (a different one each epoch): a batch of one image breaks
    # batch norm, and equal batches keep per-step schedules exact. A set smaller than one batch
    # is one batch.
    return max(1, n_images // batch_size)
