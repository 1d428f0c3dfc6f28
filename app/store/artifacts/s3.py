"""Checkpoints in S3-compatible object storage (AWS S3, MinIO, Ceph, Cloudflare R2, GCS's S3 API).

boto3 speaks the protocol: it reads credentials, region and endpoint from the standard variables
(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_DEFAULT_REGION,
AWS_ENDPOINT_URL, AWS_PROFILE, instance roles), and its managed transfer uploads a large file in
parts that become the object only when the upload completes: a reader sees the whole checkpoint
or none. Each object also carries its sha256 as metadata (x-amz-meta-sha256); the database's
record is the one checked.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from app.store.artifacts.base import ArtifactStore, Blob, check_key, digest, missing, verify
from app.store.artifacts.cache import FileCache
from app.store.artifacts.local import link_or_copy

MISSING_CODES = {"404", "NoSuchKey", "NotFound"}


class S3Store(ArtifactStore):
    local = False

    def __init__(
        self, bucket: str, prefix: str, cache_dir: Path, cache_bytes: int, client: Any = None
    ) -> None:
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.cache = FileCache(Path(cache_dir) / "objects", cache_bytes)
        self.work_root = Path(cache_dir) / "work"
        self.client = client if client is not None else make_client()
        self._transfer = _transfer_config()

    @classmethod
    def from_url(cls, url: str, cache_dir: Path, cache_bytes: int) -> S3Store:
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        return cls(bucket, prefix, cache_dir, cache_bytes)

    def name(self, key: str) -> str:
        """The object name of a key."""
        return f"{self.prefix}/{check_key(key)}" if self.prefix else check_key(key)

    def put(self, source: Path, key: str) -> Blob:
        found = digest(source)
        self.client.upload_file(
            str(source),
            self.bucket,
            self.name(key),
            ExtraArgs={"Metadata": {"sha256": found.sha256}},
            Config=self._transfer,
        )
        # The uploader keeps a copy, so resuming here downloads nothing: a hard link (free), as
        # checkpoints are replaced by rename, never rewritten in place.
        temp = self.cache.temp_for(key)
        link_or_copy(source, temp)
        self.cache.admit(temp, key)
        return Blob(key, found.size, found.sha256)

    def get(self, blob: Blob) -> Path:
        cached = self.cache.lookup(blob)
        if cached is not None:
            return cached
        temp = self.cache.temp_for(blob.key)
        try:
            try:
                self.client.download_file(self.bucket, self.name(blob.key), str(temp), Config=self._transfer)
            except Exception as exc:
                if _is_missing(exc):
                    raise missing(blob, f"s3://{self.bucket}/{self.name(blob.key)}") from exc
                raise
            verify(temp, blob, f"s3://{self.bucket}/{self.name(blob.key)}")
            return self.cache.admit(temp, blob.key)
        finally:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self.name(key))
        except Exception as exc:
            if _is_missing(exc):
                return False
            raise
        return True

    def keys(self, prefix: str) -> dict[str, int]:
        start = len(self.prefix) + 1 if self.prefix else 0
        found = {}
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.name(prefix.rstrip("/")) + "/"
        )
        for page in pages:
            for item in page.get("Contents", []):
                found[item["Key"][start:]] = item["Size"]
        return found

    def delete(self, keys: list[str]) -> None:
        for first in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            chunk = keys[first : first + 1000]
            self.client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": self.name(k)} for k in chunk], "Quiet": True},
            )
        self.cache.discard(keys)

    def delete_prefix(self, prefix: str) -> None:
        self.delete(sorted(self.keys(prefix)))
        self.cache.discard_prefix(prefix)

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


def make_client() -> Any:
    try:
        import boto3
        from botocore.config import Config
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise RuntimeError(
            "SWEEPSERVE_ARTIFACTS_DIR is an s3:// URL but boto3 is not installed: "
            "pip install 'sweepserve[s3]'"
        ) from exc
    # S3-compatible servers at an endpoint of their own (MinIO, Ceph, moto) want path-style
    # addressing (http://host/bucket/key); AWS itself picks the style.
    style = "path" if os.environ.get("AWS_ENDPOINT_URL") else "auto"
    config = Config(retries={"max_attempts": 5, "mode": "standard"}, s3={"addressing_style": style})
    return boto3.session.Session().client("s3", config=config)


def _transfer_config() -> Any:
    from boto3.s3.transfer import TransferConfig

    # Parts of 16 MiB: a ResNet-18 last.pt (~90-130 MB) goes up in a handful of parallel parts.
    return TransferConfig(multipart_threshold=16 * 1024**2, multipart_chunksize=16 * 1024**2)


def _is_missing(exc: Exception) -> bool:
    error = getattr(exc, "response", None) or {}
    return str(error.get("Error", {}).get("Code")) in MISSING_CODES
