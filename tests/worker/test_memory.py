"""A trial too big for the worker's memory: with a real memory limit (RLIMIT_DATA, set by the
worker from SWEEPSERVE_WORKER_MEMORY_LIMIT_MB), the allocation fails inside PyTorch; the trial
fails once, naming its batch size, and the same worker goes on to train the next trial."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from app.settings import Settings
from app.store.db import transaction
from app.store.jobs import submit_job
from app.worker.memory import is_out_of_memory
from tests.postgres import ONE_DATABASE
from tests.workers import TINY_DATA, finish, start_worker, tiny_spec, trial_row

MEMORY_LIMIT_MB = 3000  # ample for the tiny recipe (batch 16), far too little for a CIFAR-stem batch of 900
TOO_BIG_BATCH = 900  # ~7 GB of activations on the CIFAR stem


@pytest.fixture(scope="module")
def bigger_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1,000 synthetic training images: enough for one batch that cannot fit."""
    from tests.synthetic import write_image_folder

    root = tmp_path_factory.mktemp("cifar-1000")
    write_image_folder(root, n_train_per_class=100, n_test_per_class=5)
    return root


def _submit(factory: sessionmaker[Session], **train: object) -> int:
    with transaction(factory) as session:
        job, _ = submit_job(session, tiny_spec(1, data=TINY_DATA, **train))
        return job.trials[0].id


@ONE_DATABASE
@pytest.mark.slow
def test_a_batch_too_big_for_the_memory_limit_fails_once_and_the_worker_goes_on(
    factory: sessionmaker[Session],
    worker_settings: Callable[..., Settings],
    bigger_data_dir: Path,
    tmp_path: Path,
) -> None:
    too_big = _submit(factory, arch="resnet18", batch_size=TOO_BIG_BATCH)  # older: claimed first
    fine = _submit(factory)
    settings = worker_settings(data_dir=bigger_data_dir, worker_memory_limit_mb=MEMORY_LIMIT_MB)
    log_file = tmp_path / "worker.log"
    log = finish(start_worker(settings, log_file, "--max-trials", "2"), log_file)  # one process: it lived on

    failed = trial_row(factory, too_big)
    assert (failed.status, failed.attempts) == ("failed", 1), failed.error  # not retried
    assert failed.error is not None and f"batch_size {TOO_BIG_BATCH}" in failed.error
    assert "/" not in failed.error  # no allocator source paths
    assert "can't allocate memory" in log  # the real allocator failed, not an injected error
    assert trial_row(factory, fine).status == "succeeded", log[-3000:]


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (MemoryError(), True),
        (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
        (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 bytes"), True),
        (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), False),
        (ValueError("out of memory"), False),
    ],
)
def test_out_of_memory_is_recognised(error: BaseException, expected: bool) -> None:
    assert is_out_of_memory(error) is expected
