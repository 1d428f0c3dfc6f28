"""The EMA's multi-tensor update equals the per-tensor definition, also after a resume."""

from __future__ import annotations

import torch
from torch import nn

from ml.ema import EMA


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))


def _step(net: nn.Module, seed: int) -> None:
    torch.manual_seed(seed)
    net.train()
    net(torch.randn(4, 3, 6, 6)).sum().backward()
    with torch.no_grad():
        for p in net.parameters():
            p -= 0.1 * p.grad


def _reference(avg: dict[str, torch.Tensor], net: nn.Module, n: int, decay: float) -> None:
    d = min(decay, (1 + n) / (10 + n))
    for k, v in net.state_dict().items():
        avg[k] = d * avg[k] + (1 - d) * v if v.is_floating_point() else v.clone()


def test_update_is_the_moving_average_of_every_float_tensor_and_copies_counters() -> None:
    net = _net()
    net(torch.randn(2, 3, 6, 6))  # materialise the lazy layer
    ema = EMA(net, decay=0.5)
    expected = {k: v.clone() for k, v in net.state_dict().items()}
    for n in range(1, 6):
        _step(net, n)
        ema.update(net)
        _reference(expected, net, n, 0.5)
    for k, v in ema.module.state_dict().items():
        torch.testing.assert_close(v, expected[k], msg=k)
    assert ema.module.state_dict()["1.num_batches_tracked"].item() == 6


def _net_like(net: nn.Module) -> nn.Module:
    other = _net()
    other(torch.randn(2, 3, 6, 6))
    return other


def test_a_restored_ema_keeps_updating_its_own_tensors() -> None:
    net = _net()
    net(torch.randn(2, 3, 6, 6))
    ema = EMA(net, decay=0.9)
    _step(net, 1)
    ema.update(net)
    restored = EMA(_net_like(net), decay=0.9)
    restored.load_state_dict(ema.state_dict())
    _step(net, 2)
    ema.update(net)
    restored.update(net)
    assert restored.updates == 2 == ema.updates
    for k, v in ema.module.state_dict().items():
        torch.testing.assert_close(restored.module.state_dict()[k], v, msg=k)
