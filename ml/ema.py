"""Exponential moving average of a network's weights (and batch-norm statistics)."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class EMA:
    """`module` holds the average; it is what evaluation and checkpoints use.

    The decay ramps up as min(decay, (1 + n) / (10 + n)) after n updates, so that a short
    run's average is not dominated by the random initialisation.
    """

    def __init__(self, net: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(net).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        averaged, current = [], []
        for avg, cur in zip(self.module.state_dict().values(), net.state_dict().values(), strict=True):
            if avg.is_floating_point():
                averaged.append(avg)
                current.append(cur)
            else:  # e.g. num_batches_tracked: copied, not averaged
                avg.copy_(cur)
        torch._foreach_lerp_(averaged, current, 1.0 - decay)

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
