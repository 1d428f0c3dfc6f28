"""`precision: "auto"` on a CPU, chosen by measurement: bf16 autocast only where it runs this
network faster than fp32 on this machine.

CPU flags alone choose wrongly. Measured (docs/benchmarks.md): on a 2-vCPU AMD EPYC Zen 4
(AVX512-BF16) bf16 trained the CIFAR-stem ResNet-18 1.77x faster than fp32, but on a 2-vCPU Intel
Xeon with AMX it trained the torchvision-stem one at 0.61x fp32's speed. Without AMX or
AVX512-BF16, bf16 is emulated (0.17x measured on an AVX2-only EPYC): fp32 without measuring.
"""

from __future__ import annotations

import functools
import logging
import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn

from ml.config import TrainConfig
from ml.models import build_model

log = logging.getLogger(__name__)

PROBE_MAX_BATCH = 64  # images per timed pass, at most: the speed ratio moves with the batch size
ROUNDS = 3  # timed passes per precision, taken in turns so that load from elsewhere hits both
MARGIN = 1.1  # bf16 must be this much faster to be chosen: it also rounds more coarsely


@dataclass(frozen=True)
class PrecisionProbe:
    fp32_seconds: float  # median time of one pass (forward and backward when training)
    bf16_seconds: float
    batch: int
    training: bool

    @property
    def precision(self) -> str:
        return "bf16" if self.fp32_seconds > MARGIN * self.bf16_seconds else "fp32"


def cpu_precision(cfg: TrainConfig, batch: int, training: bool = True) -> PrecisionProbe:
    """Time `cfg`'s network on the CPU in both precisions (once per process and network shape)."""
    probe_batch = max(1, min(batch, PROBE_MAX_BATCH))
    key = (cfg.arch, cfg.norm, cfg.hidden_units, cfg.channels_last)
    return _probe(*key, probe_batch, training, torch.get_num_threads())


@functools.cache
def _probe(
    arch: str, norm: str, hidden_units: int, channels_last: bool, batch: int, training: bool, threads: int
) -> PrecisionProbe:
    with torch.random.fork_rng(devices=[]):  # the trial's seeded draws must not depend on the probe
        cfg = TrainConfig(arch=arch, norm=norm, hidden_units=hidden_units, channels_last=channels_last)
        net = build_model(cfg, allow_download=False).train(training)
        x = torch.randn(batch, 3, 32, 32)
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (batch,))
        times: dict[str, list[float]] = {"fp32": [], "bf16": []}
        for round_ in range(ROUNDS + 1):  # round 0 warms up both (allocations, kernel choice)
            for precision, samples in times.items():
                seconds = _timed_pass(net, x, y, precision == "bf16", training)
                if round_ > 0:
                    samples.append(seconds)
    fp32, bf16 = statistics.median(times["fp32"]), statistics.median(times["bf16"])
    probe = PrecisionProbe(fp32, bf16, batch, training)
    log.info(
        "precision auto: %s (%s pass of %d images: fp32 %.1f ms, bf16 %.1f ms, %d threads)",
        probe.precision,
        "training" if training else "inference",
        batch,
        1e3 * probe.fp32_seconds,
        1e3 * probe.bf16_seconds,
        threads,
    )
    return probe


def _timed_pass(net: nn.Module, x: torch.Tensor, y: torch.Tensor, bf16: bool, training: bool) -> float:
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        if not training:
            with torch.inference_mode():
                net(x)
            return time.perf_counter() - start
        loss = nn.functional.cross_entropy(net(x), y)
    loss.backward()
    net.zero_grad(set_to_none=True)
    return time.perf_counter() - start
