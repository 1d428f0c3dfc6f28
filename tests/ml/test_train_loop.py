"""`train_one_epoch` on its own: NaN detection, abort polling, the per-step schedule."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from ml.engine import train_one_epoch
from ml.environment import Runtime
from ml.train import TrialAborted

CPU = Runtime(torch.device("cpu"), (), "none", "fp32")


def _setup(lr: float = 0.01) -> tuple[nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    return net, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))


class Batches:
    """Yields batches, counting how many were taken; batch `bad` (1-based) is all NaN."""

    def __init__(self, n: int, bad: int | None = None) -> None:
        self.n, self.bad, self.taken = n, bad, 0

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = torch.Generator().manual_seed(0)
        for i in range(1, self.n + 1):
            self.taken = i
            x = torch.randn(4, 3, 8, 8, generator=generator)
            yield (torch.full_like(x, float("nan")) if i == self.bad else x), torch.arange(4)


def test_nan_loss_names_epoch_and_batch_and_stops_promptly() -> None:
    net, optimizer, scheduler = _setup()
    batches = Batches(50, bad=7)
    with pytest.raises(FloatingPointError, match="loss became NaN at epoch 3 batch 7"):
        train_one_epoch(
            net,
            optimizer,
            scheduler,
            batches,
            criterion=nn.CrossEntropyLoss(),
            epoch=3,
            runtime=CPU,
            poll_every=4,
        )
    assert batches.taken == 8  # detected at the next check, not at the end of the epoch


def test_should_stop_is_polled_after_every_step_whatever_poll_every() -> None:
    net, optimizer, scheduler = _setup()
    batches = Batches(30)
    polls = []

    def should_stop() -> bool:
        polls.append(batches.taken)
        return len(polls) == 2

    with pytest.raises(TrialAborted, match="epoch 1 batch 2"):
        train_one_epoch(
            net,
            optimizer,
            scheduler,
            batches,
            criterion=nn.CrossEntropyLoss(),
            epoch=1,
            runtime=CPU,
            should_stop=should_stop,
            poll_every=5,
        )
    assert polls == [1, 2]  # poll_every paces the NaN checks (device syncs) only


def test_scheduler_steps_per_batch_and_metrics_cover_the_epoch() -> None:
    net, optimizer, scheduler = _setup(lr=0.1)
    done = train_one_epoch(
        net, optimizer, scheduler, Batches(6), criterion=nn.CrossEntropyLoss(), epoch=1, runtime=CPU
    )
    assert scheduler.last_epoch == 6
    assert done.lr == pytest.approx(0.1 / 6)  # the lr of the last (6th) step
    assert done.images == 24 and 0.0 <= done.accuracy <= 1.0 and done.loss > 0
