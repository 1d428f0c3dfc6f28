"""Early-stopping rules as pure functions over validation-accuracy histories.

A history is the list of a trial's validation accuracies, one per completed epoch
(`history[0]` is epoch 1). Decisions are taken at epoch boundaries only.

- ASHA (Li et al. 2020, "A System for Massively Parallel Hyperparameter Tuning"): rungs at
  `min_epochs * eta**k`. A trial reaching a rung continues only when its accuracy there is
  in the top 1/eta of the accuracies recorded at that rung by all trials so far (itself
  included). Trials are never paused, so this is the stopping form of ASHA: the first trial
  to reach a rung continues, as in Ray Tune's asynchronous successive halving.
- Median stopping rule (Golovin et al. 2017, Google Vizier): at epoch s >= min_epochs a trial
  stops when its best accuracy so far is strictly worse than the median, over the other
  trials that reached epoch s, of their running-average accuracy up to s.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from ml.config import EarlyStoppingSpec

History = Sequence[float]


def asha_rungs(min_epochs: int, eta: int, max_epochs: int) -> list[int]:
    """Rung epochs strictly below max_epochs (finishing is not a rung)."""
    rungs, r = [], min_epochs
    while r < max_epochs:
        rungs.append(r)
        r *= eta
    return rungs


def asha_should_stop(
    history: History, others: Sequence[History], min_epochs: int, eta: int, max_epochs: int
) -> bool:
    epoch = len(history)
    if epoch not in asha_rungs(min_epochs, eta, max_epochs):
        return False
    recorded = [h[epoch - 1] for h in others if len(h) >= epoch]
    mine = history[epoch - 1]
    better = sum(1 for value in recorded if value > mine)
    # Rank 1 is the best; continue when the rank is within the top n/eta (at least the top one).
    keep = max(1, math.floor((len(recorded) + 1) / eta))
    return better + 1 > keep


def median_should_stop(history: History, others: Sequence[History], min_epochs: int) -> bool:
    epoch = len(history)
    if epoch < min_epochs:
        return False
    running_averages = [statistics.fmean(h[:epoch]) for h in others if len(h) >= epoch]
    if not running_averages:
        return False
    return max(history) < statistics.median(running_averages)


def should_stop(
    rule: EarlyStoppingSpec, history: History, others: Sequence[History], max_epochs: int
) -> bool:
    """True when the trial whose history is given should be pruned now."""
    if rule.strategy == "asha":
        return asha_should_stop(history, others, rule.min_epochs, rule.reduction_factor, max_epochs)
    if rule.strategy == "median":
        return median_should_stop(history, others, rule.min_epochs)
    return False
