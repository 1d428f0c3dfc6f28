"""Readers for the on-disk forms of CIFAR-10; each returns decoded uint8 NHWC arrays.

Forms: torchvision's `cifar-10-batches-py/` (pickled batches), an ImageFolder tree
`{train,test}/<class>/<image>`, and a `.tar.gz` holding that tree. The cache and the
choice between forms live in `ml.data`.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm")
IMAGE_SIZE = 32
CIFAR_BATCHES_DIR = "cifar-10-batches-py"
CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_BATCH = "test_batch"
TORCHVISION_ARCHIVE = "cifar-10-python.tar.gz"  # what torchvision downloads; holds the batches
SPLITS = ("train", "test")


class SourceError(RuntimeError):
    """A source exists but cannot be read; `ml.data` turns it into a DataError."""


@dataclass
class Dataset:
    """The whole decoded set: uint8 NHWC images, int64 labels."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: list[str]
    source: str = ""  # where it was read from, for logs


# --- torchvision's pickled batches ---------------------------------------------------------------


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles only what CIFAR batches hold (dicts, lists, numpy arrays): a batch file is data,
    and an unrestricted pickle.load would run whatever code a tampered file names."""

    _ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise SourceError(f"unexpected object {module}.{name} in a CIFAR batch file")
        return super().find_class(module, name)


def _read_pickle(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            entry = _BatchUnpickler(f, encoding="latin1").load()
    except (OSError, pickle.UnpicklingError, EOFError) as exc:
        raise SourceError(f"cannot read {path}: {exc}") from exc
    # Python 2 pickles load with str keys, files written by Python 3 with bytes keys.
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    entry = _read_pickle(path)
    if "data" not in entry or "labels" not in entry:
        raise SourceError(f"{path} has no 'data'/'labels' entries")
    rows = np.asarray(entry["data"], dtype=np.uint8)
    if rows.ndim != 2 or rows.shape[1] != 3 * IMAGE_SIZE * IMAGE_SIZE:
        raise SourceError(f"{path}: data has shape {rows.shape}, expected (N, 3072)")
    images = rows.reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE).transpose(0, 2, 3, 1)  # planar RGB -> NHWC
    return np.ascontiguousarray(images), np.asarray(entry["labels"], dtype=np.int64)


def read_cifar_batches(root: Path) -> Dataset:
    """`root` is the `cifar-10-batches-py` directory."""
    train = [_read_batch(root / name) for name in CIFAR_TRAIN_BATCHES]
    test_x, test_y = _read_batch(root / CIFAR_TEST_BATCH)
    meta = _read_pickle(root / "batches.meta")
    classes = [c.decode() if isinstance(c, bytes) else str(c) for c in meta.get("label_names", [])]
    if not classes:
        raise SourceError(f"{root / 'batches.meta'} has no label_names")
    train_x, train_y = np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train])
    return Dataset(train_x, train_y, test_x, test_y, classes, str(root))


def cifar_batch_files(root: Path) -> list[Path]:
    return [root / n for n in (*CIFAR_TRAIN_BATCHES, CIFAR_TEST_BATCH, "batches.meta")]


# --- ImageFolder trees and archives of them ------------------------------------------------------


def decode_image(data: bytes | Path, name: str) -> np.ndarray:
    """One image file -> uint8 HWC RGB. `name` is for the error message."""
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as img:
            pixels = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (OSError, UnidentifiedImageError) as exc:
        raise SourceError(f"cannot decode image {name}: {exc}") from exc
    if pixels.shape[:2] != (IMAGE_SIZE, IMAGE_SIZE):
        raise SourceError(f"image {name} is {pixels.shape[1]}x{pixels.shape[0]}, expected 32x32")
    return pixels


def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES)


def image_folder_root(data_dir: Path) -> Path | None:
    """The directory holding train/ and test/, or None."""
    for root in (data_dir / "cifar10", data_dir):
        if all((root / split).is_dir() for split in SPLITS):
            return root
    return None


def _split_files(root: Path, split: str) -> list[Path]:
    return sorted(p for p in (root / split).glob("*/*") if p.is_file() and _is_image(p.name))


def image_folder_files(root: Path) -> list[Path]:
    return [p for split in SPLITS for p in _split_files(root, split)]


def read_image_folder(root: Path) -> Dataset:
    """`root/{train,test}/<class>/<image>`; classes are the sorted train folder names."""
    images = (
        (split, p.parent.name, decode_image(p, str(p))) for split in SPLITS for p in _split_files(root, split)
    )
    return _assemble(images, root)


def read_image_tar(archive: Path) -> Dataset:
    """A .tar.gz whose members end in `{train,test}/<class>/<image>` (any leading folders)."""
    return _assemble(_tar_images(archive), archive)


def _tar_images(archive: Path) -> Iterator[tuple[str, str, np.ndarray]]:
    try:
        with tarfile.open(archive, mode="r|gz") as tar:  # streamed: one pass over the archive
            for member in tar:
                parts = PurePosixPath(member.name).parts
                if (
                    not member.isfile()
                    or len(parts) < 3
                    or parts[-3] not in SPLITS
                    or not _is_image(parts[-1])
                ):
                    continue
                f = tar.extractfile(member)
                if f is None:
                    continue
                name = f"{archive}:{member.name}"
                yield parts[-3], parts[-2], decode_image(f.read(), name)
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise SourceError(f"cannot read archive {archive}: {exc}") from exc


def _assemble(images: Iterable[tuple[str, str, np.ndarray]], where: Path) -> Dataset:
    # Sorting by (class, position) makes the arrays independent of the archive's member order.
    by_split: dict[str, list[tuple[str, int, np.ndarray]]] = {s: [] for s in SPLITS}
    for position, (split, cls, pixels) in enumerate(images):
        by_split[split].append((cls, position, pixels))
    classes = sorted({cls for cls, _, _ in by_split["train"]})
    if not classes:
        raise SourceError(f"{where} has no images under train/<class>/")
    unknown = sorted({cls for cls, _, _ in by_split["test"]} - set(classes))
    if unknown or not by_split["test"]:
        raise SourceError(f"{where}: test/ must hold images of the train classes; extra: {unknown or 'none'}")
    index = {cls: i for i, cls in enumerate(classes)}
    arrays: list[np.ndarray] = []
    for split in SPLITS:
        items = sorted(by_split[split], key=lambda item: (index[item[0]], item[1]))
        arrays.append(np.stack([pixels for _, _, pixels in items]))
        arrays.append(np.array([index[cls] for cls, _, _ in items], dtype=np.int64))
    return Dataset(*arrays, classes=classes, source=str(where))
