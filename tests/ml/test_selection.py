"""The best-epoch rule shared by the trainer (best.pt) and the queue (trials.best_epoch)."""

from __future__ import annotations

import subprocess
import sys

from ml.selection import first_best


def test_the_earliest_of_equal_maxima_wins() -> None:
    assert first_best([0.2, 0.5, 0.4, 0.5]) == 1
    assert first_best([0.7]) == 0
    assert first_best([]) is None


def test_the_queue_gets_the_rule_without_importing_torch() -> None:
    code = "import app.store.claims, sys; assert 'torch' not in sys.modules, 'the store imported torch'"
    subprocess.run([sys.executable, "-c", code], check=True)
