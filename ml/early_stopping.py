"""Early-stopping rules as pure functions over validation-accuracy histories.

A history is the list of a trial's validation accuracies, one per completed epoch
(`history[0]` is epoch 1). Decisions are taken at epoch boundaries only.

- ASHA (Li et al. 2020, "A System for Massively Parallel Hyperparameter Tuning"): rungs at
  `min_epochs * eta**k`. A trial reaching a rung is promoted (continues) when its accuracy
  there is in the top floor(n/eta) of the n accuracies recorded at that rung so far (itself
  included), as in the paper's promotion rule. When it is not, and other trials of the job
  have still to reach the rung, it PAUSEs: the worker puts it back in the queue (its checkpoint kept) and
  trains those first, so a few workers do not let the first arrivals run on unchallenged.
  A trial that may not wait (it already did at this rung, or nobody is left to arrive) gets
  the stopping form instead, as in Ray Tune: it continues when in the top max(1, floor(n/eta)).
- Median stopping rule (Golovin et al. 2017, Google Vizier): at epoch s >= min_epochs a trial
  stops when its best accuracy so far is strictly worse than the median, over the other
  trials that reached epoch s, of their running-average accuracy up to s.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from ml.config import EarlyStoppingSpec
from ml.status import Decision

History = Sequence[float]


def asha_rungs(min_epochs: int, eta: int, max_epochs: int) -> list[int]:
    """Rung epochs strictly below max_epochs (finishing is not a rung)."""
    rungs, r = [], min_epochs
    while r < max_epochs:
        rungs.append(r)
        r *= eta
    return rungs


def asha_decision(
    history: History,
    others: Sequence[History],
    min_epochs: int,
    eta: int,
    max_epochs: int,
    *,
    may_wait: bool = False,
) -> Decision:
    epoch = len(history)
    if epoch not in asha_rungs(min_epochs, eta, max_epochs):
        return Decision.CONTINUE
    recorded = [h[epoch - 1] for h in others if len(h) >= epoch]
    rank = 1 + sum(1 for value in recorded if value > history[epoch - 1])  # 1 is the best
    promotable = math.floor((len(recorded) + 1) / eta)
    if rank <= promotable:
        return Decision.CONTINUE
    if may_wait:
        return Decision.PAUSE
    return Decision.PRUNE if rank > max(1, promotable) else Decision.CONTINUE


def median_should_stop(history: History, others: Sequence[History], min_epochs: int) -> bool:
    epoch = len(history)
    if epoch < min_epochs:
        return False
    running_averages = [statistics.fmean(h[:epoch]) for h in others if len(h) >= epoch]
    if not running_averages:
        return False
    return max(history) < statistics.median(running_averages)


def decide(
    rule: EarlyStoppingSpec,
    history: History,
    others: Sequence[History],
    max_epochs: int,
    *,
    may_wait: bool = False,
) -> Decision:
    """What the trial whose history is given does now. Only ASHA ever waits (see the module doc);
    `may_wait` says whether other trials of the job have still to reach this epoch."""
    if rule.strategy == "asha":
        return asha_decision(
            history, others, rule.min_epochs, rule.reduction_factor, max_epochs, may_wait=may_wait
        )
    if rule.strategy == "median" and median_should_stop(history, others, rule.min_epochs):
        return Decision.PRUNE
    return Decision.CONTINUE
