"""End-to-end acceptance on the real CIFAR-10 copy, as a new user would run it.

Claim checked (first issue's "done when", CPU):
  1. a 2-point grid, arch resnet18_imagenet, 1 epoch, train_limit 10000 finishes in minutes,
     both trials with validation and test accuracy clearly above chance (0.10);
  2. 500 test images POSTed as PNG files to /predict score within 3 points of the served
     model's reported test_accuracy;
  3. kill -9 of the worker during a 3-epoch trial loses nothing: attempts 2, exactly 3 epoch rows.

Run:  python bench/e2e_cifar.py [--tarball ../shared/datasets/cifar10-jpeg.tar.gz] [--skip-kill]
It starts `sweepserve serve` on a free loopback port in a temporary home and prints a report.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import httpx
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TARBALL = REPO.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"
PER_CLASS = 50  # 10 classes x 50 = 500 test images for /predict


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(home: Path, port: int, lease_seconds: float) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "SWEEPSERVE_DATABASE_URL": f"sqlite:///{home / 'sweepserve.db'}",
        "SWEEPSERVE_ARTIFACTS_DIR": str(home / "artifacts"),
        "SWEEPSERVE_DATA_DIR": str(home / "data"),
        "SWEEPSERVE_ALLOW_DOWNLOAD": "false",
        "SWEEPSERVE_LEASE_SECONDS": str(lease_seconds),
        "SWEEPSERVE_HEARTBEAT_SECONDS": str(lease_seconds / 5),
        "SWEEPSERVE_MODEL_POLL_SECONDS": "1",
    }
    cmd = ["sweepserve", "serve", "--port", str(port), "--workers", "1"]
    return subprocess.Popen(cmd, env=env, stdout=sys.stdout, stderr=sys.stderr, start_new_session=True)


def wait_ready(client: httpx.Client, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if client.get("/healthz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise TimeoutError("server did not come up")


def wait_job(client: httpx.Client, job_id: int, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(2)
    raise TimeoutError(f"job {job_id} did not finish in {timeout} s")


def test_pngs(tarball: Path) -> list[tuple[bytes, str]]:
    """PER_CLASS test images per class, re-encoded as PNG (the pixels the JPEG decodes to)."""
    chosen: dict[str, int] = {}
    out = []
    with tarfile.open(tarball) as tar:
        for member in tar:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) < 3 or parts[-3] != "test":
                continue
            label = parts[-2]
            if chosen.get(label, 0) >= PER_CLASS:
                continue
            chosen[label] = chosen.get(label, 0) + 1
            image = Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB")  # type: ignore[union-attr]
            buf = io.BytesIO()
            image.save(buf, format="PNG")
            out.append((buf.getvalue(), label))
    return out


def predict_accuracy(client: httpx.Client, images: list[tuple[bytes, str]]) -> tuple[float, int]:
    correct, model_id = 0, -1
    for start in range(0, len(images), 100):
        chunk = images[start : start + 100]
        files = [("file", (f"{i}.png", png, "image/png")) for i, (png, _) in enumerate(chunk)]
        body = client.post("/predict", files=files).raise_for_status().json()
        model_id = body["model"]["id"]
        correct += sum(p["label"] == label for p, (_, label) in zip(body["predictions"], chunk, strict=True))
    return correct / len(images), model_id


def grid_and_predict(client: httpx.Client, tarball: Path) -> dict:
    spec = {
        "name": "e2e 2-point grid",
        "search": {"strategy": "grid", "space": {"lr": [0.02, 0.05]}},
        "train": {"arch": "resnet18_imagenet", "epochs": 1, "batch_size": 128},
        "data": {"train_limit": 10000},
    }
    started = time.monotonic()
    job_id = client.post("/jobs", json=spec).raise_for_status().json()["id"]
    job = wait_job(client, job_id, timeout=1800)
    elapsed = time.monotonic() - started
    time.sleep(3)  # the predictor polls for the new best model every second
    accuracy, model_id = predict_accuracy(client, test_pngs(tarball))
    model = client.get(f"/models/{model_id}").json()
    return {
        "job_seconds": round(elapsed, 1),
        "job_status": job["status"],
        "trials": [
            {k: t[k] for k in ("params", "status", "val_accuracy", "test_accuracy", "attempts")}
            for t in job["trials"]
        ],
        "best": job["best"],
        "served_model": model_id,
        "served_test_accuracy": model["test_accuracy"],
        "predict_accuracy_500_png": accuracy,
    }


def worker_pid(home: Path) -> int:
    with sqlite3.connect(home / "sweepserve.db") as conn:
        row = conn.execute("SELECT pid FROM workers ORDER BY started_at DESC LIMIT 1").fetchone()
    return int(row[0])


def kill_and_resume(client: httpx.Client, home: Path) -> dict:
    spec = {
        "name": "e2e kill -9",
        "train": {"arch": "resnet18_imagenet", "epochs": 3, "batch_size": 128, "lr": 0.05},
        "data": {"train_limit": 3000},
    }
    job_id = client.post("/jobs", json=spec).raise_for_status().json()["id"]
    while client.get(f"/jobs/{job_id}").json()["trials"][0]["epoch"] < 1:
        time.sleep(1)
    time.sleep(2)  # into epoch 2
    pid = worker_pid(home)
    os.kill(pid, signal.SIGKILL)
    job = wait_job(client, job_id, timeout=1800)
    trial = job["trials"][0]
    history = client.get(f"/jobs/{job_id}/trials/{trial['id']}").json()["history"]
    return {
        "killed_worker_pid": pid,
        "job_status": job["status"],
        "attempts": trial["attempts"],
        "epoch_rows": [row["epoch"] for row in history],
        "val_accuracy": trial["val_accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tarball", type=Path, default=DEFAULT_TARBALL)
    parser.add_argument("--skip-kill", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sweepserve-e2e-") as tmp:
        home = Path(tmp)
        (home / "data").mkdir()
        (home / "data" / args.tarball.name).symlink_to(args.tarball.resolve())
        port = free_port()
        server = start_server(home, port, lease_seconds=15)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
                wait_ready(client)
                report = {"grid": grid_and_predict(client, args.tarball)}
                if not args.skip_kill:
                    report["kill"] = kill_and_resume(client, home)
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
