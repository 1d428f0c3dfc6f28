"""From the worker's --gpus option to the devices a trial trains on, on SQLite and PostgreSQL.

Without CUDA the CPU paths train for real (one process, or two gloo ranks for ddp); the CUDA path
is followed as far as this machine allows: `sweepserve worker --gpus 0,1` hands the ids on,
and the runtime chosen for several GPUs is DataParallel unless ddp is asked for.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

import app.worker.loop
from app.settings import Settings
from app.store.db import transaction
from app.store.jobs import submit_job
from app.store.tables import RegisteredModel, Trial
from app.worker.loop import run_worker
from ml.checkpoint import load_checkpoint
from ml.config import TrainConfig
from ml.environment import select_runtime
from ml.job import JobSpec
from tests.postgres import ONE_DATABASE
from tests.synthetic import write_image_folder

REPO = Path(__file__).resolve().parents[2]
WORKER_TIMEOUT_S = 240
# Separates the synthetic classes in one epoch (the ML engine's fast test recipe).
TINY_TRAIN: dict[str, Any] = {
    "arch": "resnet18_imagenet",
    "epochs": 1,
    "batch_size": 16,
    "optimizer": "adamw",
    "lr": 1e-3,
    "weight_decay": 0.05,
    "ema_decay": 0.9,
    "warmup_min_steps": 0,  # ~15 steps: the presets' warm-up floor would keep lr near zero
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    write_image_folder(root, n_train_per_class=30, n_test_per_class=5)
    return root


def _submit(factory: sessionmaker[Session], space: dict[str, list[Any]], max_attempts: int = 3) -> list[int]:
    spec = JobSpec.model_validate(
        {
            "search": {"space": space},
            "train": TINY_TRAIN,
            "data": {"val_size": 60},
            "max_attempts": max_attempts,
        }
    )
    with transaction(factory) as session:
        job, _ = submit_job(session, spec)
        return [trial.id for trial in job.trials]


def _run_worker_process(settings: Settings, log_file: Path, *args: str) -> tuple[int, str]:
    """`sweepserve worker ARGS` to completion; returns its exit code and log."""
    env = os.environ | {
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",  # two shared cores: one thread, or one per rank under ddp
        "SWEEPSERVE_DATABASE_URL": settings.database_url,
        "SWEEPSERVE_ARTIFACTS_DIR": str(settings.artifacts_dir),
        "SWEEPSERVE_DATA_DIR": str(settings.data_dir),
        "SWEEPSERVE_ALLOW_DOWNLOAD": "false",
        "SWEEPSERVE_POLL_SECONDS": "0.1",
    }
    with log_file.open("wb") as log:
        command = [sys.executable, "-m", "app.cli", "worker", *args]
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            process.wait(timeout=WORKER_TIMEOUT_S)
        finally:
            if process.poll() is None:
                process.kill()  # only the worker this test started, by its pid
                process.wait()
    return process.returncode, log_file.read_text()


def _trials(factory: sessionmaker[Session], ids: list[int]) -> list[Trial]:
    with factory() as session:
        return list(session.scalars(select(Trial).where(Trial.id.in_(ids)).order_by(Trial.index)))


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
@ONE_DATABASE
def test_gpus_empty_trains_every_trial_on_the_cpu_in_one_process_or_two_ddp_ranks(
    factory: sessionmaker[Session],
    worker_settings: Any,
    data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ids = _submit(factory, {"parallel": ["none", "ddp"]})
    settings = worker_settings(data_dir=data_dir)
    seen: list[list[int] | None] = []
    real_run_trial = app.worker.loop.run_trial

    def run_trial(*args: Any, device_ids: list[int] | None = None, **kwargs: Any) -> Any:
        seen.append(device_ids)  # then trains for real
        return real_run_trial(*args, device_ids=device_ids, **kwargs)

    monkeypatch.setattr(app.worker.loop, "run_trial", run_trial)
    with caplog.at_level(logging.INFO, logger="sweepserve.worker"):
        run_worker(settings, gpus=[], max_trials=2)
    assert "worker started (gpus: cpu)" in caplog.text
    assert seen == [[], []]  # the CPU for every trial, not "every visible GPU" (None)
    single, ddp = _trials(factory, ids)
    for trial in (single, ddp):
        assert trial.status == "succeeded", trial.error
        assert trial.val_accuracy is not None and trial.val_accuracy >= 0.5  # chance is 0.1
        assert trial.environment is not None and trial.environment["device_type"] == "cpu"
        assert trial.environment["device_ids"] == []
    assert single.environment is not None and single.environment["parallel"] == "none"
    assert ddp.environment is not None and ddp.environment["parallel"] == "ddp"
    with factory() as session:
        model = session.scalars(select(RegisteredModel).where(RegisteredModel.trial_id == ddp.id)).one()
    metadata = load_checkpoint(settings.artifacts_dir / model.path)["metadata"]
    assert metadata["world_size"] == 2 and metadata["trial_id"] == ddp.id


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA these ids would train (bench/gpu.sh)")
@ONE_DATABASE
def test_gpu_ids_on_the_command_line_reach_the_worker(
    factory: sessionmaker[Session], worker_settings: Any, data_dir: Path, tmp_path: Path
) -> None:
    [trial_id] = _submit(factory, {"seed": [0]})
    settings = worker_settings(data_dir=data_dir)
    code, log = _run_worker_process(settings, tmp_path / "worker.log", "--gpus", "0,1", "--max-trials", "1")
    # This machine has no GPU: the worker refuses to start, naming the ids it was given ...
    assert code != 0 and "device_ids [0, 1] given but CUDA is not available" in log
    # ... before it claimed a trial it could only fail.
    [trial] = _trials(factory, [trial_id])
    assert (trial.status, trial.attempts) == ("queued", 0)


@pytest.fixture
def two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """What torch reports on a machine with two bf16-capable GPUs (no CUDA call is made)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)


@pytest.mark.usefixtures("two_gpus")
def test_several_gpus_default_to_dataparallel() -> None:
    for device_ids in ([0, 1], None):  # --gpus 0,1, or no --gpus: every visible GPU
        runtime = select_runtime(TrainConfig(), device_ids)
        assert (runtime.device, runtime.device_ids) == (torch.device("cuda", 0), (0, 1))
        assert (runtime.parallel, runtime.precision) == ("dataparallel", "bf16")


@pytest.mark.usefixtures("two_gpus")
def test_one_gpu_per_worker_trains_on_that_gpu_alone() -> None:
    runtime = select_runtime(TrainConfig(), [1])  # --gpus 1: a worker that owns the second GPU
    assert (runtime.device, runtime.device_ids, runtime.parallel) == (torch.device("cuda", 1), (1,), "none")
    runtime = select_runtime(TrainConfig(parallel="none"), [0, 1])  # several, but asked for one
    assert (runtime.device, runtime.device_ids, runtime.parallel) == (torch.device("cuda", 0), (0,), "none")
