"""Which epoch of a trial counts as its best: one rule for the trainer (best.pt) and the queue
(trials.best_epoch). Imports nothing heavy, so the queue and the API need no torch for it."""

from __future__ import annotations

from collections.abc import Sequence


def first_best(val_accuracies: Sequence[float]) -> int | None:
    """Index of the highest validation accuracy, the earliest on ties; None for no epochs.

    The earliest wins because best.pt is only rewritten on a strict improvement.
    """
    if not val_accuracies:
        return None
    return max(range(len(val_accuracies)), key=lambda i: (val_accuracies[i], -i))
