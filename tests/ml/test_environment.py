"""Device selection, precision, determinism flags, random-state capture and the environment record."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from ml import environment
from ml.config import TrainConfig
from ml.environment import describe, determinism, restore_rng_state, rng_state, select_runtime


def test_ddp_is_not_a_single_process_runtime() -> None:
    with pytest.raises(ValueError, match=r"ml\.distributed"):  # run_trial dispatches ddp before this
        select_runtime(TrainConfig(parallel="ddp"), None)


def test_empty_device_list_means_cpu_and_cuda_ids_need_cuda() -> None:
    runtime = select_runtime(TrainConfig(), [])
    assert runtime.device == torch.device("cpu") and runtime.parallel == "none" and runtime.device_ids == ()
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            select_runtime(TrainConfig(), [0])


CPU_PRECISIONS = [
    (True, "auto", "bf16"),
    (False, "auto", "fp32"),
    (False, "bf16", "bf16"),
    (True, "fp32", "fp32"),
]


@pytest.mark.parametrize(("fast_bf16", "requested", "expected"), CPU_PRECISIONS)
def test_cpu_precision(
    monkeypatch: pytest.MonkeyPatch, fast_bf16: bool, requested: str, expected: str
) -> None:
    monkeypatch.setattr(environment, "cpu_has_fast_bf16", lambda: fast_bf16)
    assert select_runtime(TrainConfig(precision=requested), []).precision == expected


def test_bf16_autocast_is_what_the_runtime_says() -> None:
    layer = torch.nn.Linear(4, 4)
    for precision, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        runtime = environment.Runtime(torch.device("cpu"), (), "none", precision)
        with runtime.autocast():
            assert layer(torch.randn(2, 4)).dtype == dtype


def test_determinism_is_scoped_to_the_trial() -> None:
    before = torch.are_deterministic_algorithms_enabled()
    with determinism(not before, torch.device("cpu")):
        assert torch.are_deterministic_algorithms_enabled() is not before
    assert torch.are_deterministic_algorithms_enabled() is before


def test_rng_state_round_trip() -> None:
    generator = torch.Generator().manual_seed(5)
    state = rng_state(generator)
    draws = (torch.rand(3, generator=generator), torch.rand(3), random.random(), np.random.rand())
    restore_rng_state(state, generator)
    again = (torch.rand(3, generator=generator), torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(draws[0], again[0]) and torch.equal(draws[1], again[1])
    assert draws[2:] == again[2:]


def test_environment_record_is_plain_and_complete() -> None:
    cfg = TrainConfig()
    record = describe(select_runtime(cfg, []), cfg, compile_seconds=None, compiled=False)
    assert record["torch"] == torch.__version__ and record["device_type"] == "cpu"
    assert record["precision"] in ("bf16", "fp32") and record["python"].count(".") == 2
    assert record["git_sha"] is None or len(record["git_sha"]) == 40
    assert all(type(v) in (str, int, float, bool, list, type(None)) for v in record.values())


def test_generator_state_from_another_device_type_is_not_applied() -> None:
    generator = torch.Generator().manual_seed(5)
    state = rng_state(generator)
    state["data_generator_device"] = "cuda"  # as written by a GPU worker
    expected_cpu = torch.rand(2)
    torch.manual_seed(1)
    assert restore_rng_state(state, generator) is False
    assert torch.equal(torch.rand(2), expected_cpu)  # the other streams are still restored
