"""The default artifact store: a directory (shared by every process when there are several
machines, e.g. over NFS). Keys are paths under it; workers train in it directly."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path

from app.store.artifacts.base import ArtifactStore, Blob, check_key, digest, missing, verify


class LocalStore(ArtifactStore):
    local = True

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.work_root = self.root

    def path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, source: Path, key: str) -> Blob:
        target = self.path(key)
        if Path(source).resolve() != target.resolve():
            target.parent.mkdir(parents=True, exist_ok=True)
            link_or_copy(Path(source), target)
        found = digest(target)
        return Blob(key, found.size, found.sha256)

    def get(self, blob: Blob) -> Path:
        path = self.path(blob.key)
        if not path.is_file():
            raise missing(blob, str(path))
        verify(path, blob, str(path))
        return path

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def keys(self, prefix: str) -> dict[str, int]:
        folder = self.path(prefix.rstrip("/"))
        if not folder.is_dir():
            return {}
        return {
            p.relative_to(self.root).as_posix(): p.stat().st_size
            for p in folder.rglob("*")
            if p.is_file() and not p.name.startswith(".")  # temp files of writes in progress
        }

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            with contextlib.suppress(FileNotFoundError):
                self.path(key).unlink()

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self.path(prefix.rstrip("/")), ignore_errors=True)

    def describe(self) -> str:
        return str(self.root)


def link_or_copy(source: Path, target: Path) -> None:
    """Make `target` hold `source`'s bytes, atomically. A hard link costs nothing and stays
    intact when the source is later replaced (checkpoints are replaced by rename, never rewritten)."""
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        try:
            os.link(source, tmp)
        except OSError:  # a filesystem without hard links
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
