"""Search-space expansion: a job's search space and base `TrainConfig` become a list of trials.

Grid and random search share one grammar: a list of choices, or a `RangeSpec` (random only).
Random search is reproducible from `search.seed`.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from ml.config import MAX_TRIALS, RangeSpec, SearchSpec, TrainConfig


@dataclass(frozen=True)
class TrialPoint:
    index: int
    params: dict[str, Any]  # only the swept keys
    config: TrainConfig  # base train config with params applied


def expand(search: SearchSpec, train: TrainConfig) -> list[TrialPoint]:
    """All trials of a job, in a stable order. Raises ValueError on a bad point or too many."""
    if search.strategy == "grid":
        points = _grid_points(search.space)
    else:
        points = _random_points(search.space, search.trials or 1, search.seed)
    return [TrialPoint(i, p, _apply(train, p)) for i, p in enumerate(points)]


def _grid_points(space: dict[str, Any]) -> list[dict[str, Any]]:
    count = math.prod(len(values) for values in space.values())
    if count > MAX_TRIALS:
        raise ValueError(f"the grid has {count} points; at most {MAX_TRIALS} trials per job")
    keys = list(space)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*space.values())]


def _random_points(space: dict[str, Any], trials: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [{key: _sample(value, rng) for key, value in space.items()} for _ in range(trials)]


def _sample(value: list[Any] | RangeSpec, rng: random.Random) -> Any:
    if isinstance(value, list):
        return value[rng.randrange(len(value))]
    if value.log:
        x = math.exp(rng.uniform(math.log(value.low), math.log(value.high)))
    else:
        x = rng.uniform(value.low, value.high)
    return round(x) if value.integer else x


def _apply(base: TrainConfig, params: dict[str, Any]) -> TrainConfig:
    try:
        return TrainConfig.model_validate({**base.model_dump(), **params})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "train"
        raise ValueError(f"search point {params} is invalid: {where}: {first['msg']}") from None
