"""The benchmarks' CIFAR-10: the shared JPEG archive, extracted once into a cache folder.

Both trainers read the same extracted tree: torchvision's ImageFolder for the reference loop,
`ml.data.load_dataset` (decoded once to uint8 arrays, cached as .npz beside it) for ours.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ARCHIVE_NAME = "cifar10-jpeg.tar.gz"
# The shared copy beside the checkout, or the copy the lead puts into ./shared on a device machine.
ARCHIVE_CANDIDATES = (REPO.parent / "shared" / "datasets" / ARCHIVE_NAME, REPO / "shared" / ARCHIVE_NAME)
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sweepserve" / "bench"
_DONE = ".extracted"


def find_archive(explicit: Path | None) -> Path:
    candidates = (explicit,) if explicit is not None else ARCHIVE_CANDIDATES
    for path in candidates:
        if path is not None and path.is_file():
            return path
    names = " or ".join(str(p) for p in candidates if p is not None)
    raise SystemExit(f"no CIFAR-10 archive at {names}; pass --data PATH to {ARCHIVE_NAME}")


def extracted(archive: Path, cache_dir: Path = DEFAULT_CACHE) -> Path:
    """The folder holding train/<class>/* and test/<class>/* of `archive`, extracted on first use."""
    stat = archive.stat()
    root = cache_dir / f"{archive.name.removesuffix('.tar.gz')}-{stat.st_size}-{stat.st_mtime_ns}"
    if not (root / _DONE).is_file():
        root.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            tar.extractall(root, filter="data")  # "data": no absolute paths, links or devices
        (root / _DONE).touch()
    return _tree(root)


def _tree(root: Path) -> Path:
    """The archive may hold train/ and test/ at its top or one folder down."""
    for candidate in (root, *sorted(p for p in root.iterdir() if p.is_dir())):
        if (candidate / "train").is_dir() and (candidate / "test").is_dir():
            return candidate
    raise SystemExit(f"{root} holds no train/ and test/ folders")
