"""Device augmentation: same outcome distribution as torchvision's PIL pipeline, seeded, vectorised."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from ml.augment import (
    augment_batch,
    cutout,
    normalize,
    random_crop,
    random_flip,
    steps_per_epoch,
    train_batches,
    translate,
)
from ml.config import AugmentConfig
from ml.data import MEAN, STD

DRAWS = 4000
PAD = 4


def _outcomes(image: np.ndarray) -> dict[bytes, tuple[int, int, bool]]:
    """Every image RandomCrop(32, padding=4) + flip can produce, keyed by its bytes."""
    padded = np.pad(image, ((PAD, PAD), (PAD, PAD), (0, 0)))
    table = {}
    for dy in range(2 * PAD + 1):
        for dx in range(2 * PAD + 1):
            crop = padded[dy : dy + 32, dx : dx + 32]
            for flip in (False, True):
                table[np.ascontiguousarray(crop[:, ::-1] if flip else crop).tobytes()] = (dy, dx, flip)
    assert len(table) == 2 * (2 * PAD + 1) ** 2  # a noise image makes every outcome distinct
    return table


def _chi2_upper(df: int, z: float = 3.72) -> float:
    """Wilson-Hilferty approximation of the chi-square quantile at normal quantile z (3.72: p = 1e-4)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def test_crop_and_flip_match_torchvision_in_distribution() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(1, 256, size=(32, 32, 3), dtype=np.uint8)  # no zero pixel: padding is visible
    table = _outcomes(image)

    reference = transforms.Compose(
        [transforms.RandomCrop(32, padding=PAD), transforms.RandomHorizontalFlip()]
    )
    torch.manual_seed(0)
    pil = Image.fromarray(image)
    theirs = Counter(table[np.asarray(reference(pil)).tobytes()] for _ in range(DRAWS))

    batch = torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0).repeat(DRAWS, 1, 1, 1)
    generator = torch.Generator().manual_seed(0)
    out = random_flip(random_crop(batch, PAD, generator), generator)
    ours = Counter(table[img.permute(1, 2, 0).contiguous().numpy().tobytes()] for img in out)

    # Every output is a valid crop/flip (the lookups above), and every one of the 162 outcomes occurs.
    assert set(ours) == set(theirs) == set(table.values())
    # Homogeneity of the two samples (equal sizes), chi-square with 161 degrees of freedom.
    chi2 = sum((ours[k] - theirs[k]) ** 2 / (ours[k] + theirs[k]) for k in table.values())
    assert chi2 < _chi2_upper(len(table) - 1)
    # Marginals: offsets uniform on 0..8, flips at one half.
    for axis in (0, 1):
        counts = Counter(k[axis] for k in ours.elements())
        expected = DRAWS / (2 * PAD + 1)
        assert sum((c - expected) ** 2 / expected for c in counts.values()) < _chi2_upper(2 * PAD)
    flips = sum(1 for k in ours.elements() if k[2])
    assert abs(flips - DRAWS / 2) < 4 * math.sqrt(DRAWS / 4)


def test_cutout_zeroes_a_clipped_square_centred_uniformly() -> None:
    n, size = 3000, 8
    x = torch.ones(n, 3, 32, 32)
    out = cutout(x, size, torch.Generator().manual_seed(0))
    zero = out[:, 0] == 0
    assert torch.equal(zero, (out == 0).all(1))  # the same square in every channel
    rows, cols = zero.any(2), zero.any(1)
    heights, widths = rows.sum(1), cols.sum(1)
    assert torch.equal(zero.sum((1, 2)), heights * widths)  # a rectangle
    assert heights.min() >= size // 2 and heights.max() == size and widths.max() == size
    # Centre c uniform on the 32 pixels, square [c - 4, c + 4) clipped to the image.
    expected_side = sum(min(c + size // 2, 32) - max(c - size // 2, 0) for c in range(32)) / 32
    assert abs(heights.float().mean().item() - expected_side) < 0.1
    assert abs(widths.float().mean().item() - expected_side) < 0.1
    top = rows.float().argmax(1)
    assert (top == 0).float().mean().item() == pytest.approx(5 / 32, abs=0.03)  # centres 0..4 touch the top


def test_normalize_uses_mean_and_std() -> None:
    x = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1).repeat(1, 3, 2, 2)
    out = normalize(x, MEAN, STD)
    for c in range(3):
        assert out[0, c, 0, 0].item() == pytest.approx(-MEAN[c] / STD[c], rel=1e-5)
        assert out[1, c, 0, 0].item() == pytest.approx((1 - MEAN[c]) / STD[c], rel=1e-5)


def test_same_seed_same_batches_and_every_image_once_per_epoch() -> None:
    x = torch.arange(50, dtype=torch.uint8).view(50, 1, 1, 1).repeat(1, 3, 32, 32)
    y = torch.arange(50)
    cfg = AugmentConfig(crop=True, flip=True, cutout=4)

    def epoch(seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return list(train_batches(x, y, 16, cfg, MEAN, STD, torch.Generator().manual_seed(seed)))

    first, again, other = epoch(1), epoch(1), epoch(2)
    assert len(first) == steps_per_epoch(50, 16) == 3  # the ragged last batch (2 images) is dropped
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0][1], other[0][1])
    labels = torch.cat([b[1] for b in first])
    assert len(set(labels.tolist())) == 48  # no image twice in an epoch
    images = first[0][0]
    assert images.dtype == torch.float32 and images.is_contiguous(memory_format=torch.channels_last)


def test_a_set_smaller_than_a_batch_is_one_batch() -> None:
    x = torch.zeros(5, 3, 32, 32, dtype=torch.uint8)
    batches = list(train_batches(x, torch.arange(5), 64, AugmentConfig(), MEAN, STD, torch.Generator()))
    assert len(batches) == 1 and batches[0][0].shape[0] == 5


def test_augmentation_off_is_plain_normalisation() -> None:
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    cfg = AugmentConfig(crop=False, flip=False, cutout=0)
    assert torch.equal(augment_batch(x, cfg, MEAN, STD, torch.Generator()), normalize(x, MEAN, STD))


def test_reflect_crop_matches_torchvision_reflect_padding() -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    pad = 2
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")  # torch's "reflect"
    table = {
        np.ascontiguousarray(padded[dy : dy + 32, dx : dx + 32]).tobytes(): (dy, dx)
        for dy in range(2 * pad + 1)
        for dx in range(2 * pad + 1)
    }
    assert len(table) == (2 * pad + 1) ** 2
    reference = transforms.RandomCrop(32, padding=pad, padding_mode="reflect")
    torch.manual_seed(0)
    theirs = Counter(table[np.asarray(reference(Image.fromarray(image))).tobytes()] for _ in range(1000))

    batch = torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0).repeat(1000, 1, 1, 1)
    cfg = AugmentConfig(flip=False, crop_padding=pad, crop_fill="reflect")
    out = augment_batch(batch, cfg, (0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255), torch.Generator())
    ours = Counter(table[img.permute(1, 2, 0).round().to(torch.uint8).numpy().tobytes()] for img in out)

    # Every output is one of the 25 reflect-padded crops (no zero border), each of them drawn.
    assert set(ours) == set(theirs) == set(table.values())
    chi2 = sum((ours[k] - theirs[k]) ** 2 / (ours[k] + theirs[k]) for k in table.values())
    assert chi2 < _chi2_upper(len(table) - 1)


@pytest.mark.parametrize("fill", ["zeros", "reflect"])
def test_translate_moves_each_image_by_its_own_offset(fill: str) -> None:
    x = torch.randint(0, 256, (3, 2, 32, 32), dtype=torch.uint8)
    dy, dx = torch.tensor([0, 3, -2]), torch.tensor([0, -4, 1])
    out = translate(x, dy, dx, fill)
    mode = "reflect" if fill == "reflect" else "constant"
    for i in range(3):
        padded = np.pad(x[i].numpy(), ((0, 0), (4, 4), (4, 4)), mode=mode)
        top, left = 4 + int(dy[i]), 4 + int(dx[i])
        assert np.array_equal(out[i].numpy(), padded[:, top : top + 32, left : left + 32])


def _mirrored_ids(batches: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[int, bool]:
    """Image id (the label) -> whether its batch shows it mirrored (column 0 brighter than column 31)."""
    return {
        int(label): bool(image[0, 0, 0] > image[0, 0, 31])
        for images, labels in batches
        for image, label in zip(images, labels, strict=True)
    }


def test_alternating_flip_mirrors_each_image_on_every_other_epoch() -> None:
    n = 64
    ramp = torch.arange(32, dtype=torch.uint8).expand(n, 3, 32, 32).clone()  # mirrored: column 0 is 31
    cfg = AugmentConfig(crop=False, cutout=0, flip_mode="alternate")
    generator = torch.Generator().manual_seed(5)

    def epoch(number: int, gen: torch.Generator = generator) -> dict[int, bool]:
        return _mirrored_ids(
            list(train_batches(ramp, torch.arange(n), 16, cfg, MEAN, STD, gen, epoch=number))
        )

    first, second, third = epoch(1), epoch(2), epoch(3)
    assert len(first) == n  # every image once per epoch, shuffled differently each epoch
    assert all(second[i] != first[i] for i in range(n))  # the other half next epoch
    assert third == first
    assert 20 < sum(first.values()) < 44  # a seeded half
    # A fresh generator of the same seed (a resumed or another DDP rank's) flips the same halves,
    # however far its stream has moved; another seed flips other ones.
    moved = torch.Generator().manual_seed(5)
    torch.rand(1000, generator=moved)
    assert epoch(2, moved) == second
    assert epoch(1, torch.Generator().manual_seed(6)) != first


def test_random_flip_mode_ignores_the_epoch() -> None:
    ramp = torch.arange(32, dtype=torch.uint8).expand(64, 3, 32, 32).clone()
    cfg = AugmentConfig(crop=False, cutout=0)

    def epoch(number: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(5)
        return list(train_batches(ramp, torch.arange(64), 16, cfg, MEAN, STD, gen, epoch=number))

    assert _mirrored_ids(epoch(1)) == _mirrored_ids(epoch(2))
