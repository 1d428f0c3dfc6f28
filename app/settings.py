"""Every setting, read once from `SWEEPSERVE_*` environment variables (or a .env file)."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, StringConstraints, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_HOME = Path("sweepserve-data")
# s3://bucket or s3://bucket/prefix: checkpoints in S3-compatible object storage (app.store.artifacts)
S3Url = Annotated[str, StringConstraints(pattern=r"^s3://[^/\s]+(/\S*)?$")]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SWEEPSERVE_", env_file=".env", extra="ignore")

    # storage
    database_url: str = f"sqlite:///{DEFAULT_HOME / 'sweepserve.db'}"  # or postgresql://user@host/db
    # checkpoints: a directory every process sees, or s3://bucket/prefix (credentials, region and
    # endpoint from the standard AWS_* variables)
    artifacts_dir: S3Url | Path = DEFAULT_HOME / "artifacts"
    cache_dir: Path = DEFAULT_HOME / "cache"  # with s3://: local copies, and the folder workers train in
    artifact_cache_bytes: int = Field(4 * 1024**3, ge=0)  # bound of the cache's copies (LRU)
    data_dir: Path = DEFAULT_HOME / "data"  # cifar-10-batches-py/, train/+test/, or a .tar.gz
    allow_download: bool = True  # fetch CIFAR-10 / ImageNet weights when absent locally

    # queue
    lease_seconds: float = Field(60.0, gt=0)  # a trial not heartbeaten for this long is re-queued
    heartbeat_seconds: float = Field(10.0, gt=0)  # how often a worker renews its lease
    poll_seconds: float = Field(1.0, gt=0)  # idle worker's sleep between claims
    worker_memory_limit_mb: int | None = Field(None, ge=64)  # RLIMIT_DATA of a worker: OOM fails the trial

    # serving
    api_key: str | None = None  # when set, Bearer auth on everything but /healthz and /readyz
    model_poll_seconds: float = Field(2.0, gt=0)  # how often /predict looks for a better model
    max_images_per_request: int = Field(256, ge=1)
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    max_batch_size: int = Field(64, ge=1)  # dynamic batching; 1 disables it
    max_delay_ms: float = Field(5.0, ge=0)  # longest wait to fill a batch
    max_queue: int = Field(1024, ge=1)  # pending images before 503 + Retry-After
    max_request_pixels: int = Field(4 * 2048 * 2048, ge=1024)  # decoded pixels per request, else 413
    max_decode_pixels: int = Field(16 * 2048 * 2048, ge=1024)  # pixels being decoded at once, else 503
    decode_threads: int = Field(2, ge=1)  # the bounded pool /predict decodes images in
    max_jpeg_scans: int = Field(64, ge=1)  # progressive JPEGs with more scans are refused (422)
    model_cache_size: int = Field(3, ge=1)  # loaded models kept for ?model_id=
    inference_threads: int = Field(0, ge=0)  # torch threads of /predict's forward; 0 = all cores but one

    # logs
    log_json: bool = False
    log_level: str = "INFO"

    @field_validator("artifacts_dir", mode="before")
    @classmethod
    def _no_half_url(cls, value: object) -> object:
        # "s3:/bucket" or "s3://" would otherwise become a local folder named "s3:".
        if isinstance(value, str) and value.startswith("s3:") and not re.match(r"^s3://[^/\s]+", value):
            raise ValueError(f"{value!r}: an object store is written s3://bucket or s3://bucket/prefix")
        return value

    @field_validator("database_url")
    @classmethod
    def _psycopg_driver(cls, url: str) -> str:
        # A plain postgresql:// URL means psycopg 3, not SQLAlchemy's psycopg2 default.
        for prefix in ("postgresql://", "postgres://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url[len(prefix) :]
        return url


@lru_cache
def get_settings() -> Settings:
    return Settings()
