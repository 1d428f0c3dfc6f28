"""Device selection, precision, determinism flags, random-state capture and the environment record."""

from __future__ import annotations

import random
from dataclasses import asdict

import numpy as np
import pytest
import torch

from ml import environment
from ml.config import TrainConfig
from ml.environment import describe, determinism, restore_rng_state, rng_state, select_runtime
from ml.precision import MARGIN, PROBE_MAX_BATCH, PrecisionProbe, cpu_precision


def test_ddp_is_not_a_single_process_runtime() -> None:
    with pytest.raises(ValueError, match=r"ml\.distributed"):  # run_trial dispatches ddp before this
        select_runtime(TrainConfig(parallel="ddp"), None)


def test_empty_device_list_means_cpu_and_cuda_ids_need_cuda() -> None:
    runtime = select_runtime(TrainConfig(), [])
    assert runtime.device == torch.device("cpu") and runtime.parallel == "none" and runtime.device_ids == ()
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            select_runtime(TrainConfig(), [0])


def probe(fp32_seconds: float, bf16_seconds: float) -> PrecisionProbe:
    return PrecisionProbe(fp32_seconds, bf16_seconds, batch=64, training=True)


# (AMX or AVX512-BF16, the measured probe, requested, chosen)
CPU_PRECISIONS = [
    (True, probe(2.0, 1.0), "auto", "bf16"),  # bf16 measured 2x faster (Zen 4, CIFAR stem)
    (True, probe(0.6, 1.0), "auto", "fp32"),  # bf16 slower although the CPU has AMX (a Xeon)
    (True, probe(1.05, 1.0), "auto", "fp32"),  # within the margin: not worth bf16's rounding
    (False, None, "auto", "fp32"),  # bf16 emulated: not even measured
    (False, None, "bf16", "bf16"),  # asked for explicitly: as asked
    (True, None, "fp32", "fp32"),
]


@pytest.mark.parametrize(("fast_bf16", "measured", "requested", "expected"), CPU_PRECISIONS)
def test_cpu_precision_auto_follows_the_measurement(
    monkeypatch: pytest.MonkeyPatch,
    fast_bf16: bool,
    measured: PrecisionProbe | None,
    requested: str,
    expected: str,
) -> None:
    monkeypatch.setattr(environment, "cpu_has_fast_bf16", lambda: fast_bf16)
    asked: list[bool] = []

    def fake_probe(cfg: TrainConfig, batch: int, training: bool) -> PrecisionProbe:
        asked.append(training)
        assert measured is not None, "measured although the choice needs no measurement"
        return measured

    monkeypatch.setattr(environment, "cpu_precision", fake_probe)
    runtime = select_runtime(TrainConfig(precision=requested), [])
    assert runtime.precision == expected
    assert runtime.precision_probe == measured and len(asked) == (measured is not None)
    record = describe(runtime, TrainConfig(precision=requested), None, compiled=False)
    assert record["precision_probe"] == (None if measured is None else asdict(measured))


def test_the_probe_times_both_precisions_without_touching_the_seeded_draws() -> None:
    cfg = TrainConfig(arch="resnet18_imagenet", batch_size=4)
    torch.manual_seed(7)
    expected_next = torch.rand(3)
    torch.manual_seed(7)
    measured = cpu_precision(cfg, cfg.batch_size, training=True)
    assert torch.equal(torch.rand(3), expected_next)
    assert measured.batch == 4 and measured.training
    assert measured.fp32_seconds > 0 and measured.bf16_seconds > 0
    faster = "bf16" if measured.fp32_seconds > MARGIN * measured.bf16_seconds else "fp32"
    assert measured.precision == faster
    assert cpu_precision(cfg, cfg.batch_size, training=True) is measured  # once per process
    inference = cpu_precision(cfg, 500, training=False)
    assert inference is not measured and inference.batch == PROBE_MAX_BATCH and not inference.training


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
    plain = (str, int, float, bool, list, type(None))
    probe = record.pop("precision_probe")  # a dict of plain values where "auto" measured
    assert probe is None or all(type(v) in plain for v in probe.values())
    assert all(type(v) in plain for v in record.values())


def test_generator_state_from_another_device_type_is_not_applied() -> None:
    generator = torch.Generator().manual_seed(5)
    state = rng_state(generator)
    state["data_generator_device"] = "cuda"  # as written by a GPU worker
    expected_cpu = torch.rand(2)
    torch.manual_seed(1)
    assert restore_rng_state(state, generator) is False
    assert torch.equal(torch.rand(2), expected_cpu)  # the other streams are still restored
