"""CIFAR-10 as whole uint8 arrays: find it on disk, decode it once (cached), split it.

`load_dataset` looks in `data_dir`, in this order, and uses the first form present:
  1. torchvision's `cifar-10-batches-py/`
  2. an ImageFolder tree `cifar10/{train,test}/<class>/*` or `{train,test}/<class>/*`
  3. one `*.tar.gz` of that tree (e.g. cifar10-jpeg.tar.gz)
and, when none is present and `download` is true, has torchvision download form 1.
Decoded datasets are cached as .npz under `data_dir/.cache` (or the user cache dir when
`data_dir` is read-only), keyed by the source's path, sizes and mtimes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ml import sources
from ml.atomic import atomic_write
from ml.config import DataConfig
from ml.sources import Dataset

log = logging.getLogger(__name__)

# Per-channel mean/std of the CIFAR-10 training images (pixel values scaled to [0, 1]).
MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)

FORMS_ACCEPTED = (
    "cifar-10-batches-py/ (torchvision's pickled batches), "
    "cifar10/{train,test}/<class>/<image> or {train,test}/<class>/<image> (ImageFolder layout), "
    "or a *.tar.gz of that layout"
)
_SPLIT_STREAM = 0x5B17  # keeps split sampling apart from every other use of the seed
_CACHE_VERSION = 1


class DataError(RuntimeError):
    """The data set is missing, unreadable or cannot be split as asked."""


@dataclass
class Splits:
    """uint8 NCHW tensors on the CPU (stored channels-last, i.e. NHWC in memory), int64 labels."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    val_fingerprint: str = ""  # sha256 of the validation indices: the same for the same split


def without_test(splits: Splits) -> Splits:
    """The splits with no test images: a trial of a data.test "best" job is not tested itself."""
    return dataclasses.replace(splits, test_x=splits.test_x[:0], test_y=splits.test_y[:0])


def fingerprint(indices: np.ndarray) -> str:
    """Names a validation set: equal fingerprints, equal images (of the same data set)."""
    return hashlib.sha256(np.ascontiguousarray(indices, dtype="<i8").tobytes()).hexdigest()


# --- loading -------------------------------------------------------------------------------------


def load_dataset(name: str, data_dir: Path, download: bool) -> Dataset:
    if name != "cifar10":
        raise DataError(f"unknown dataset {name!r}; only 'cifar10' is supported")
    data_dir = Path(data_dir)
    source = _find_source(data_dir)
    if source is None and download:
        _download_cifar10(data_dir)
        source = _find_source(data_dir)
    if source is None:
        hint = "" if download else "; or allow downloading"
        raise DataError(f"no CIFAR-10 data in {data_dir}: expected {FORMS_ACCEPTED}{hint}")
    kind, path, files = source
    key = _cache_key(kind, path, files)
    cached = _read_cache(data_dir, key)
    if cached is not None:
        return cached
    try:
        dataset = _decode(kind, path)
    except sources.SourceError as exc:
        raise DataError(f"{exc} (in {data_dir}; accepted forms: {FORMS_ACCEPTED})") from exc
    _write_cache(data_dir, key, dataset)
    return dataset


def _find_source(data_dir: Path) -> tuple[str, Path, list[Path]] | None:
    batches = data_dir / sources.CIFAR_BATCHES_DIR
    if batches.is_dir():
        return "batches", batches, sources.cifar_batch_files(batches)
    root = sources.image_folder_root(data_dir)
    if root is not None:
        return "folder", root, sources.image_folder_files(root)
    archives = _image_archives(data_dir)
    if len(archives) > 1:
        names = ", ".join(a.name for a in archives)
        raise DataError(f"{data_dir} holds several image archives ({names}); keep one or extract one")
    if archives:
        return "tar", archives[0], archives
    return None


def _image_archives(data_dir: Path) -> list[Path]:
    # torchvision's own download archive holds pickled batches, not images; it is handled by download.
    if not data_dir.is_dir():
        return []
    found = sorted(data_dir.glob("*.tar.gz"))
    return [p for p in found if p.name != sources.TORCHVISION_ARCHIVE]


def _decode(kind: str, path: Path) -> Dataset:
    log.info("decoding CIFAR-10 from %s (once; cached afterwards)", path)
    if kind == "batches":
        return sources.read_cifar_batches(path)
    if kind == "folder":
        return sources.read_image_folder(path)
    return sources.read_image_tar(path)


def _torchvision_cifar10() -> type:
    from torchvision.datasets import CIFAR10  # imported late: torchvision is slow to import

    return CIFAR10


def _download_cifar10(data_dir: Path) -> None:
    """torchvision downloads, verifies (md5) and extracts `cifar-10-batches-py/` into data_dir."""
    log.info("downloading CIFAR-10 into %s", data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        _torchvision_cifar10()(root=str(data_dir), train=False, download=True)
    except (OSError, RuntimeError) as exc:
        raise DataError(f"could not download CIFAR-10 into {data_dir}: {exc}") from exc


# --- cache ---------------------------------------------------------------------------------------


def _cache_key(kind: str, path: Path, files: list[Path]) -> str:
    stats = [(str(f.relative_to(path)) if f != path else "", *_stat(f)) for f in files]
    blob = json.dumps([_CACHE_VERSION, kind, str(path.resolve()), stats])
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _stat(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    return st.st_size, st.st_mtime_ns


def _cache_dirs(data_dir: Path) -> list[Path]:
    user_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sweepserve"
    return [data_dir / ".cache", user_cache]


def _cache_file(directory: Path, key: str) -> Path:
    return directory / f"cifar10-{key}.npz"


def _read_cache(data_dir: Path, key: str) -> Dataset | None:
    for directory in _cache_dirs(data_dir):
        path = _cache_file(directory, key)
        if not path.is_file():
            continue
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in ("train_x", "train_y", "test_x", "test_y", "classes")}
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            log.warning("ignoring unreadable cache %s: %s", path, exc)
            continue
        log.info("CIFAR-10 from cache %s", path)
        classes = [str(c) for c in arrays.pop("classes")]
        return Dataset(**arrays, classes=classes, source=str(path))
    return None


def _write_cache(data_dir: Path, key: str, ds: Dataset) -> None:
    arrays = {
        "train_x": ds.train_x,
        "train_y": ds.train_y,
        "test_x": ds.test_x,
        "test_y": ds.test_y,
        "classes": np.array(ds.classes, dtype=str),
    }
    for directory in _cache_dirs(data_dir):
        try:
            atomic_write(_cache_file(directory, key), lambda f: np.savez(f, **arrays))
            return
        except OSError as exc:  # a read-only data_dir (shared datasets) falls back to the user cache
            log.warning("cannot write the data cache in %s: %s", directory, exc)


# --- splits --------------------------------------------------------------------------------------


def make_splits(ds: Dataset, cfg: DataConfig, seed: int | None = None) -> Splits:
    """Hold `cfg.val_size` images out of train and cap train at `cfg.train_limit`, both stratified.

    The draw is seeded by `cfg.split_seed` (or `seed`, when given), never by a trial's training
    seed: every trial of a job is selected on the same validation images."""
    rng = np.random.default_rng([cfg.split_seed if seed is None else seed, _SPLIT_STREAM])
    n_classes = len(ds.classes)
    by_class = [rng.permutation(np.flatnonzero(ds.train_y == c)) for c in range(n_classes)]
    sizes = np.array([len(idx) for idx in by_class])
    n_val = _stratified_counts(sizes, cfg.val_size)
    if cfg.val_size >= sizes.sum() or np.any((n_val >= sizes) & (sizes > 0)):
        raise DataError(
            f"val_size {cfg.val_size} is too large: the training images ({sizes.sum()} in {n_classes} "
            f"classes, from {ds.source or 'the data set'}) must keep at least one image per class"
        )
    rest = [idx[k:] for idx, k in zip(by_class, n_val, strict=True)]
    n_train = np.array([len(idx) for idx in rest])
    if cfg.train_limit is not None and cfg.train_limit < n_train.sum():
        n_train = _stratified_counts(n_train, cfg.train_limit)
    val_idx = np.sort(np.concatenate([idx[:k] for idx, k in zip(by_class, n_val, strict=True)]))
    train_idx = np.sort(np.concatenate([idx[:k] for idx, k in zip(rest, n_train, strict=True)]))
    return Splits(
        *_to_tensors(ds.train_x[train_idx], ds.train_y[train_idx]),
        *_to_tensors(ds.train_x[val_idx], ds.train_y[val_idx]),
        *_to_tensors(ds.test_x, ds.test_y),
        classes=list(ds.classes),
        val_fingerprint=fingerprint(val_idx),
    )


def _stratified_counts(sizes: np.ndarray, total: int) -> np.ndarray:
    """Split `total` across classes in proportion to `sizes` (largest remainder), never above a size."""
    quotas = sizes * (total / sizes.sum())
    counts = np.minimum(np.floor(quotas).astype(np.int64), sizes)
    remainders = np.where(counts < sizes, quotas - counts, -1.0)
    for c in np.argsort(-remainders, kind="stable")[: total - counts.sum()]:
        counts[c] += 1
    return counts


def _to_tensors(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    # NHWC memory viewed as NCHW is exactly channels-last: no copy, and the training layout.
    images = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)
    return images, torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))
