"""Checkpoint files: one `ArtifactStore` interface for the worker, the predictor, export and
deletion, with two implementations chosen by SWEEPSERVE_ARTIFACTS_DIR:

- a directory (`LocalStore`, the default): workers train in it, every process reads it;
- s3://bucket/prefix (`S3Store`): S3-compatible object storage. Workers train in a local folder
  and upload each epoch's checkpoints; readers download into a bounded local cache.

`layout` says where a trial's files go (one folder, or key prefix, per attempt).
"""

from __future__ import annotations

from app.settings import Settings
from app.store.artifacts.base import ArtifactStore, Blob, digest
from app.store.artifacts.layout import (
    ATTEMPT_PREFIX,
    attempt_dir,
    attempts_on_disk,
    discard_superseded,
    job_dir,
    job_key,
    keep_model_file,
    resume_point,
    start_attempt,
    trial_dir,
    trial_key,
)
from app.store.artifacts.local import LocalStore, link_or_copy

__all__ = [
    "ATTEMPT_PREFIX",
    "ArtifactStore",
    "Blob",
    "LocalStore",
    "attempt_dir",
    "attempts_on_disk",
    "digest",
    "discard_superseded",
    "job_dir",
    "job_key",
    "keep_model_file",
    "link_or_copy",
    "open_store",
    "resume_point",
    "start_attempt",
    "trial_dir",
    "trial_key",
]


def open_store(settings: Settings) -> ArtifactStore:
    """The store SWEEPSERVE_ARTIFACTS_DIR names."""
    location = settings.artifacts_dir
    if isinstance(location, str):  # s3://bucket/prefix (validated by Settings)
        from app.store.artifacts.s3 import S3Store  # boto3 is needed only here

        return S3Store.from_url(location, settings.cache_dir, settings.artifact_cache_bytes)
    return LocalStore(location)
