"""The artifact store interface: checkpoints by key, written atomically, read back verified.

A key is a relative POSIX path ("jobs/3/trials/7/attempt-2/best.pt"); each store maps it to a
place (a file under the artifacts directory, an object under s3://bucket/prefix). A `Blob` is
what the database records of a stored file: its key, size and sha256, checked on every `get`.
"""

from __future__ import annotations

import hashlib
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from app.errors import ArtifactCorrupt, ArtifactMissing

CHUNK = 1 << 20
log = logging.getLogger("sweepserve.artifacts")


@dataclass(frozen=True)
class Blob:
    key: str
    size: int | None = None  # None: recorded before sizes were (a row older than migration 0004)
    sha256: str | None = None


def check_key(key: str) -> str:
    """Refuse keys that could leave the store's root (absolute, '..', empty parts)."""
    path = PurePosixPath(key)
    if not key or path.is_absolute() or any(part in ("", ".", "..") for part in key.split("/")):
        raise ValueError(f"bad artifact key {key!r}")
    return key


def digest(path: Path) -> Blob:
    """Size and sha256 of a local file (as a key-less Blob)."""
    sha = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            sha.update(chunk)
            size += len(chunk)
    return Blob("", size, sha.hexdigest())


def short_name(key: str) -> str:
    """The part of a key an answer may show: "attempt-2/epoch-3/best.pt", not where it is stored."""
    parts = key.split("/")
    return "/".join(parts[4:]) if len(parts) > 4 and parts[0] == "jobs" else parts[-1]


def verify(path: Path, blob: Blob, where: str) -> None:
    """ArtifactCorrupt unless the file at `path` has the blob's recorded size and sha256. The
    message names the checkpoint, not its location (answers show it); the log says `where`."""
    size = path.stat().st_size
    problem = None
    if blob.size is not None and size != blob.size:
        problem = f"has {size} bytes, {blob.size} were recorded: truncated or replaced"
    elif blob.sha256 is not None:
        actual = digest(path).sha256
        if actual != blob.sha256:
            problem = f"has sha256 {actual}, {blob.sha256} was recorded: it was modified"
    if problem is not None:
        log.error("checkpoint %s %s; refusing it", where, problem)
        raise ArtifactCorrupt(f"checkpoint {short_name(blob.key)} {problem}")


def missing(blob: Blob, where: str) -> ArtifactMissing:
    """The error for a checkpoint that is not there (logged with its location)."""
    log.error("checkpoint %s is missing", where)
    return ArtifactMissing(f"checkpoint {short_name(blob.key)} is missing from the artifact store")


class ArtifactStore(ABC):
    """Where checkpoints live. Implementations: `LocalStore` (a directory, the default) and
    `S3Store` (S3-compatible object storage)."""

    #: Whether the store is this machine's own directory, so a worker trains in place and
    #: nothing is uploaded; False for object storage.
    local: bool = True

    #: The local folder a worker trains in (the attempt folders of app.store.artifacts.layout).
    work_root: Path

    @abstractmethod
    def put(self, source: Path, key: str) -> Blob:
        """Store the file `source` under `key`, visible to readers only once complete."""

    @abstractmethod
    def get(self, blob: Blob) -> Path:
        """A local path holding the blob's bytes, verified against its size and sha256.
        ArtifactMissing when absent, ArtifactCorrupt when it does not match."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def keys(self, prefix: str) -> dict[str, int]:
        """Every key under `prefix` (a folder: "jobs/3/"), with its size in bytes."""

    @abstractmethod
    def delete(self, keys: list[str]) -> None:
        """Delete these keys; absent ones are ignored."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> None:
        """Delete every key under `prefix` (a folder: "jobs/3/")."""

    def usage(self, prefix: str) -> int:
        """Bytes stored under `prefix`."""
        return sum(self.keys(prefix).values())

    @abstractmethod
    def describe(self) -> str:
        """Where the store is, for logs and errors."""
