"""A job's points: the trials of one point of the space (its repeats) summarised, the best
point chosen on its mean, and the points whose validation interval overlaps the best's.

A point's validation interval combines the two sources of noise: the Wilson half-width of
one validation set (sampling of images) and the standard error of the mean over its repeats
(seed to seed), added in quadrature. With one run per point it is the trial's Wilson interval.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from app.store.tables import Trial
from ml.stats import Z_95, mean_and_std, overlaps, wilson_interval
from ml.status import TrialStatus


@dataclass(frozen=True)
class Point:
    point: int
    params: dict[str, Any]
    trials: list[Trial]  # its repeats, in index order
    val_mean: float | None  # over the repeats that have a validation accuracy
    val_std: float | None
    test_mean: float | None  # over the repeats that were tested
    test_std: float | None
    val_interval: tuple[float, float] | None
    tied_with_best: bool = False

    @property
    def finished(self) -> int:
        return sum(t.status is TrialStatus.SUCCEEDED for t in self.trials)


def job_points(trials: Sequence[Trial]) -> list[Point]:
    """One `Point` per point of the job, in point order, with `tied_with_best` marked."""
    groups: dict[int, list[Trial]] = defaultdict(list)
    for trial in sorted(trials, key=lambda t: t.index):
        groups[trial.point].append(trial)
    points = [_summary(number, runs) for number, runs in sorted(groups.items())]
    best = best_point(points)
    if best is None or best.val_interval is None:
        return points
    return [
        _with_tie(p, p.val_interval is not None and overlaps(p.val_interval, best.val_interval))
        for p in points
    ]


def best_point(points: Sequence[Point]) -> Point | None:
    """Highest validation mean; on a tie the point earliest in the job."""
    scored = [p for p in points if p.val_mean is not None]
    return max(scored, key=lambda p: (p.val_mean, -p.point), default=None)


def best_trial_of(point: Point) -> Trial | None:
    """The repeat that serves the point: its highest validation accuracy."""
    scored = [t for t in point.trials if t.val_accuracy is not None]
    return max(scored, key=lambda t: (t.val_accuracy, -t.index), default=None)


def _summary(number: int, runs: list[Trial]) -> Point:
    vals = [t.val_accuracy for t in runs if t.val_accuracy is not None]
    tests = [t.test_accuracy for t in runs if t.test_accuracy is not None]
    val_mean, val_std = mean_and_std(vals) if vals else (None, None)
    test_mean, test_std = mean_and_std(tests) if tests else (None, None)
    interval = _interval(runs, val_mean, val_std, len(vals))
    return Point(number, runs[0].params, runs, val_mean, val_std, test_mean, test_std, interval)


def _interval(runs: list[Trial], mean: float | None, std: float | None, n: int) -> tuple[float, float] | None:
    if mean is None:
        return None
    images = next((t.val_images for t in runs if t.val_images), None) or runs[0].job.spec["data"]["val_size"]
    if std is None:
        return wilson_interval(mean, images)  # one run: exactly the trial's interval
    low, high = wilson_interval(mean, images)
    half = math.hypot((high - low) / 2, Z_95 * std / math.sqrt(n))
    return max(0.0, mean - half), min(1.0, mean + half)


def _with_tie(point: Point, tied: bool) -> Point:
    return Point(**{**point.__dict__, "tied_with_best": tied})
