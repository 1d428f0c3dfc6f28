"""Exponential moving average of a network's weights (and batch-norm statistics)."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class EMA:
    """`module` holds the average; it is what evaluation and checkpoints use.

    The decay ramps up as min(decay, (1 + n) / (10 + n)) after n updates, so that a short
    run's average is not dominated by the random initialisation. The ramp is slow: it reaches
    0.999 only after 8,991 updates, so a 40-epoch run of 88 steps per epoch (3,520 updates) ends
    at 0.9974 (an average over the last ~390 steps); see docs/training.md.

    Each update is two multi-tensor kernels (a lerp of every floating parameter and buffer, a copy
    of the integer buffers) over tensor lists gathered once, not per-tensor copies of state dicts.
    """

    def __init__(self, net: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(net).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0
        self._mine = _tensor_lists(self.module)
        self._source: nn.Module | None = None
        self._theirs: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])

    def current_decay(self) -> float:
        """The decay the next update uses."""
        return min(self.decay, (2 + self.updates) / (11 + self.updates))

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        decay = self.current_decay()
        self.updates += 1
        if net is not self._source:  # the trained network's tensors, gathered once
            self._source, self._theirs = net, _tensor_lists(net)
        averaged, copied = self._mine
        current, counters = self._theirs
        torch._foreach_lerp_(averaged, current, 1.0 - decay)
        if copied:  # e.g. num_batches_tracked: copied, not averaged
            torch._foreach_copy_(copied, counters)

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])  # in place: the cached lists stay valid
        self.updates = int(state["updates"])


def _tensor_lists(net: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(floating tensors, other tensors) of the state dict, in its order, as the live tensors."""
    tensors = [t.detach() for t in net.state_dict(keep_vars=True).values()]
    floating = [t for t in tensors if t.is_floating_point()]
    return floating, [t for t in tensors if not t.is_floating_point()]
