"""A bounded folder of local copies of stored objects (least recently used goes first).

Used by `S3Store`: a worker resuming a trial it trained, or a predictor reloading a model, finds
the bytes here (verified against the recorded sha256) instead of downloading them again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import uuid
from pathlib import Path

from app.errors import ArtifactCorrupt
from app.store.artifacts.base import Blob, check_key, verify

log = logging.getLogger("sweepserve.artifacts")


class FileCache:
    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root, self.max_bytes = Path(root), max_bytes

    def path(self, key: str) -> Path:
        return self.root / check_key(key)

    def temp_for(self, key: str) -> Path:
        """A temporary name beside the key's file: filled, verified, then renamed into place."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")

    def lookup(self, blob: Blob) -> Path | None:
        """The cached copy when it has the blob's size and sha256; a stale or damaged copy is
        dropped. A blob without a recorded sha256 is never served from the cache."""
        path = self.path(blob.key)
        if blob.sha256 is None or not path.is_file():
            return None
        try:
            verify(path, blob, str(path))
        except ArtifactCorrupt as exc:
            log.warning("dropping a cached copy: %s", exc)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return None
        except FileNotFoundError:  # evicted by another process meanwhile
            return None
        with contextlib.suppress(FileNotFoundError):
            os.utime(path)  # most recently used
        return path

    def admit(self, temp: Path, key: str) -> Path:
        """Move a filled temporary file into place, then trim the cache (never this file)."""
        path = self.path(key)
        os.replace(temp, path)
        os.utime(path)  # most recently used (a hard link would keep its source's time)
        self.trim(keep=path)
        return path

    def discard(self, keys: list[str]) -> None:
        for key in keys:
            with contextlib.suppress(FileNotFoundError):
                self.path(key).unlink()

    def discard_prefix(self, prefix: str) -> None:
        shutil.rmtree(self.path(prefix.rstrip("/")), ignore_errors=True)

    def trim(self, keep: Path | None = None) -> None:
        """Delete the least recently used copies until the cache holds at most max_bytes."""
        files = []
        for path in self.root.rglob("*"):
            with contextlib.suppress(FileNotFoundError):
                if path.is_file() and not path.name.startswith("."):
                    stat = path.stat()
                    files.append((stat.st_mtime, stat.st_size, path))
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files, key=lambda f: f[0]):
            if total <= self.max_bytes:
                break
            if path == keep:
                continue
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            total -= size
