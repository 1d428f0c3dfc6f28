"""Tiny, learnable, CIFAR-shaped synthetic data for tests of every folder.

Each class is a distinct hue with a stripe pattern (horizontal for the first half of the
classes, vertical for the rest, each with its own period), plus per-image brightness jitter
and pixel noise. Colour and stripe orientation both survive crops, flips and JPEG, so a
ResNet separates the classes within one or two epochs of a few hundred images.
"""

from __future__ import annotations

import colorsys
import pickle
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from ml.data import Dataset

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SIZE = 32


def make_arrays(n_per_class: int, seed: int, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images NHWC, int64 labels), grouped by class; every image is distinct."""
    rng = np.random.default_rng(seed)
    images = [_class_image(c, num_classes, rng) for c in range(num_classes) for _ in range(n_per_class)]
    labels = np.repeat(np.arange(num_classes, dtype=np.int64), n_per_class)
    return np.stack(images), labels


def _class_image(label: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    rgb = np.array(colorsys.hsv_to_rgb(label / num_classes, 0.75, 0.85)) * 255.0
    period = 2 + label % 5
    coords = np.arange(SIZE)
    wave = np.where((coords // period) % 2 == 0, 35.0, -35.0)
    stripes = wave[:, None] if label < num_classes / 2 else wave[None, :]  # rows or columns
    stripes = np.broadcast_to(stripes, (SIZE, SIZE))[..., None]
    brightness = rng.uniform(-20, 20)
    noise = rng.normal(0, 18, size=(SIZE, SIZE, 3))
    return np.clip(rgb + stripes + brightness + noise, 0, 255).astype(np.uint8)


def make_dataset(
    n_train_per_class: int, n_test_per_class: int, seed: int = 0, num_classes: int = 10
) -> Dataset:
    train_x, train_y = make_arrays(n_train_per_class, seed, num_classes)
    test_x, test_y = make_arrays(n_test_per_class, seed + 1_000_003, num_classes)
    return Dataset(train_x, train_y, test_x, test_y, list(CLASSES[:num_classes]), source="synthetic")


def write_image_folder(
    root: Path,
    n_train_per_class: int = 20,
    n_test_per_class: int = 5,
    seed: int = 0,
    fmt: str = "png",
    num_classes: int = 10,
) -> Dataset:
    """Write `root/{train,test}/<class>/NNNN.<fmt>` (fmt png or jpg) and return the arrays written
    (for jpg the files hold a lossy version of them)."""
    ds = make_dataset(n_train_per_class, n_test_per_class, seed, num_classes)
    for split, xs, ys in (("train", ds.train_x, ds.train_y), ("test", ds.test_x, ds.test_y)):
        counters = dict.fromkeys(range(num_classes), 0)
        for image, label in zip(xs, ys, strict=True):
            folder = Path(root) / split / ds.classes[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{counters[label]:04d}.{fmt}", quality=90)
            counters[label] += 1
    return ds


def write_tar_gz(tree_root: Path, archive: Path, prefix: str = "") -> Path:
    """Pack `tree_root/{train,test}` into `archive`, members named `<prefix>train/...`."""
    with tarfile.open(archive, "w:gz") as tar:
        for split in ("train", "test"):
            tar.add(Path(tree_root) / split, arcname=f"{prefix}{split}")
    return archive


def write_cifar_batches(
    data_dir: Path, n_train_per_class: int = 10, n_test_per_class: int = 4, seed: int = 0
) -> Dataset:
    """Write `data_dir/cifar-10-batches-py/` in the pickle format of the real download
    (5 train batches, test_batch, batches.meta; planar RGB rows of 3072 bytes)."""
    ds = make_dataset(n_train_per_class, n_test_per_class, seed)
    folder = Path(data_dir) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    order = np.random.default_rng(seed).permutation(len(ds.train_y))  # the real batches are mixed
    chunks = np.array_split(order, 5)
    for i, idx in enumerate(chunks, start=1):
        _dump_batch(folder / f"data_batch_{i}", ds.train_x[idx], ds.train_y[idx])
    _dump_batch(folder / "test_batch", ds.test_x, ds.test_y)
    with (folder / "batches.meta").open("wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in ds.classes], b"num_vis": 3072}, f)
    shuffled = np.concatenate(chunks)
    return Dataset(ds.train_x[shuffled], ds.train_y[shuffled], ds.test_x, ds.test_y, ds.classes, "batches")


def _dump_batch(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    rows = images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # NHWC -> planar rows
    with path.open("wb") as f:
        pickle.dump({b"batch_label": b"synthetic", b"labels": labels.tolist(), b"data": rows}, f)
