"""Shared pieces of the ML engine tests: tiny learnable splits and a config that learns them fast."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from ml.config import DataConfig
from ml.data import Splits, make_splits
from tests.synthetic import make_dataset


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Two cores are shared by everyone working in this checkout: one thread per test process."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_splits() -> Splits:
    """10 classes: 240 train, 60 val, 50 test images."""
    return make_splits(make_dataset(30, 5, seed=0), DataConfig(val_size=60), seed=0)


@pytest.fixture(scope="session")
def micro_splits() -> Splits:
    """For tests that need a trial to run, not to learn: 20 train, 10 val, 20 test images."""
    return make_splits(make_dataset(3, 2, seed=1), DataConfig(val_size=10), seed=0)
