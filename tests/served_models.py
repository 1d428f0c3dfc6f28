"""Servable checkpoints, their `models` rows and image files, for the predictor and API tests.

Checkpoints are real: `ml.models.build_model` + `ml.checkpoint.inference_checkpoint`, written
with `save_atomic`, exactly what `load_for_inference` reads. They use torchvision's ImageNet
stem, the fastest ResNet-18 on a CPU; different seeds give models whose answers differ.
"""

from __future__ import annotations

import base64
import io
import struct
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.store.artifacts import trial_dir
from app.store.claims import EPOCH_FIELDS, Outcome, claim_trial, finish_trial
from app.store.db import transaction
from app.store.jobs import submit_job
from app.store.tables import RegisteredModel
from ml.checkpoint import inference_checkpoint, save_atomic
from ml.config import TrainConfig
from ml.job import JobSpec
from ml.models import build_model
from tests.synthetic import CLASSES, make_arrays

SERVING_CONFIG = TrainConfig(arch="resnet18_imagenet", epochs=1)


def write_checkpoint(path: Path, seed: int, cfg: TrainConfig = SERVING_CONFIG) -> Path:
    torch.manual_seed(seed)
    net = build_model(cfg, num_classes=len(CLASSES), allow_download=False)
    for module in net.modules():  # non-trivial running stats, so batch norm is not the identity
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    save_atomic(inference_checkpoint(net.state_dict(), cfg, CLASSES), path)
    return path


def register_model(
    factory: sessionmaker[Session],
    artifacts_dir: Path,
    val_accuracy: float,
    seed: int = 0,
    test_accuracy: float | None = None,
    corrupt: bool = False,
) -> int:
    """A one-trial job trained "instantly" and registered by the worker's own queue calls
    (claim, finish); with `corrupt`, its checkpoint file cannot be loaded. Returns the model id."""
    with transaction(factory) as session:
        job, _ = submit_job(session, JobSpec(name=f"model seed {seed}", train=SERVING_CONFIG))
    with transaction(factory) as session:
        claim = claim_trial(session, "serving-tests", lease_seconds=60)
        assert claim is not None and claim.job_id == job.id
        path = trial_dir(artifacts_dir, claim.job_id, claim.trial_id) / "best.pt"
        if corrupt:
            path.parent.mkdir(parents=True)
            path.write_bytes(b"not a checkpoint")
        else:
            write_checkpoint(path, seed)
        epoch = dict.fromkeys(EPOCH_FIELDS, 0.0) | {"epoch": 1, "val_accuracy": val_accuracy}
        relative = path.relative_to(artifacts_dir).as_posix()
        finish_trial(session, claim, Outcome("succeeded", [epoch], test_accuracy, None, relative))
        return session.scalars(
            select(RegisteredModel.id).where(RegisteredModel.trial_id == claim.trial_id)
        ).one()


def encode(pixels: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> bytes:
    image = Image.fromarray(pixels)
    buffer = io.BytesIO()
    (image.convert(mode) if mode else image).save(buffer, fmt)
    return buffer.getvalue()


def synthetic_pixels(n: int, seed: int = 0) -> np.ndarray:
    """n CIFAR-shaped uint8 images (N x 32 x 32 x 3) across the classes."""
    images, _ = make_arrays(-(-n // len(CLASSES)), seed)
    return images[np.random.default_rng(seed).permutation(len(images))[:n]]


def png_files(n: int, seed: int = 0) -> list[bytes]:
    return [encode(p) for p in synthetic_pixels(n, seed)]


def as_base64(blob: bytes) -> str:
    return base64.b64encode(blob).decode()


def png_declaring(width: int, height: int) -> bytes:
    """A tiny, valid-looking PNG whose header claims width x height (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def wait_until_serving(client: TestClient, model_id: int, timeout: float = 30.0) -> None:
    """Block until the app's predictor serves `model_id` (it polls the database)."""
    deadline = time.monotonic() + timeout
    while client.app.state.predictor.status()["model_id"] != model_id:  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, f"model {model_id} was not picked up in {timeout} s"
        time.sleep(0.02)


def problem(response: Any, status: int) -> dict[str, Any]:
    """The RFC 9457 body of an error answer, after checking its status and media type."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and body["detail"]
    return body


def jpeg_scan_bomb(scans: int = 20_000, size: int = 1024) -> bytes:
    """A valid progressive JPEG of size x size with `scans` start-of-scan markers: libjpeg's own
    progressive script, then one tiny (12-byte) refinement scan repeated. Each scan is a pass over
    every block, so 20,000 of them (257 KB) cost seconds of CPU to decode, even at draft size."""
    ramp = np.linspace(0, 255, size, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(np.stack([np.tile(ramp, (size, 1))] * 3, axis=-1)).save(
        buffer, "JPEG", progressive=True, quality=75
    )
    data = buffer.getvalue()
    scans_found = _scan_segments(data)
    start, end = min(scans_found, key=lambda s: s[1] - s[0])  # a chroma refinement: nearly no data
    last_end = scans_found[-1][1]
    return data[:last_end] + data[start:end] * (scans - len(scans_found)) + b"\xff\xd9"


def _scan_segments(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each start-of-scan segment, its entropy-coded data included."""
    found, i = [], 2
    while i < len(data) and data[i + 1] != 0xD9:
        end = i + 2 + int.from_bytes(data[i + 2 : i + 4], "big")
        if data[i + 1] == 0xDA:
            while data[end] != 0xFF or data[end + 1] == 0 or 0xD0 <= data[end + 1] <= 0xD7:
                end += 1
            found.append((i, end))
        i = end
    return found
