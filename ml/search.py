"""Search-space expansion: a job's search space and base `TrainConfig` become a list of trials.

Grid and random search share one grammar: a list of choices, or a `RangeSpec` (random only).
Random search is reproducible from `search.seed`. Every point is run `search.repeats` times, with
`train.seed`, `train.seed + 1`, ... . Adaptive strategies (tpe, cmaes) expand to no trials: their
points are chosen one at a time from the results so far (`ml.adaptive`), each through `repeats_of`.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from ml.config import MAX_TRIALS, RangeSpec, SearchSpec, TrainConfig

SEEDS = 2**31  # train.seed's range


@dataclass(frozen=True)
class TrialPoint:
    index: int  # the trial's position in the job, from 0
    point: int  # the point of the space it runs; its repeats share it
    params: dict[str, Any]  # only the swept keys
    config: TrainConfig  # base train config with params applied (and the repeat's seed)


def expand(search: SearchSpec, train: TrainConfig) -> list[TrialPoint]:
    """All trials of a job, in a stable order. Raises ValueError on a bad point or too many."""
    if search.adaptive:
        _check_corners(search.space, train)
        return []
    if search.strategy == "grid":
        points = _grid_points(search.space)
    else:
        points = _random_points(search.space, search.trials or 1, search.seed)
    if len(points) * search.repeats > MAX_TRIALS:
        raise ValueError(
            f"{len(points)} points x {search.repeats} repeats; at most {MAX_TRIALS} trials per job"
        )
    return [
        trial
        for number, params in enumerate(points)
        for trial in repeats_of(number, number * search.repeats, params, train, search.repeats)
    ]


def repeats_of(
    point: int, first_index: int, params: dict[str, Any], train: TrainConfig, repeats: int
) -> list[TrialPoint]:
    """The trials that run one point: the same config but for `seed`, which counts up."""
    config = _apply(train, params)
    return [
        TrialPoint(
            first_index + k, point, params, config.model_copy(update={"seed": (config.seed + k) % SEEDS})
        )
        for k in range(repeats)
    ]


def _check_corners(space: dict[str, Any], train: TrainConfig) -> None:
    """An adaptive job's points come later, from a sampler: refuse now a space whose ends
    (each choice, each range's low and high, one key at a time) make an invalid config."""
    for key, value in space.items():
        ends = value if isinstance(value, list) else [value.low, value.high]
        for end in ends:
            _apply(train, {key: round(end) if isinstance(value, RangeSpec) and value.integer else end})


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
    """The base config with the point's values. The base's lr is its lr at its batch size
    (lr_reference_batch == batch_size), so a point that changes batch_size alone scales lr
    linearly; a point that sets lr gets exactly that lr."""
    values = {**base.model_dump(), **params}
    if "lr" in params and "lr_reference_batch" not in params:
        del values["lr_reference_batch"]
    try:
        return TrainConfig.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "train"
        raise ValueError(f"search point {params} is invalid: {where}: {first['msg']}") from None


def added_point(
    search: SearchSpec, train: TrainConfig, params: dict[str, Any], point: int, first_index: int
) -> list[TrialPoint]:
    """The trials of a point a user adds to a job (POST /jobs/{id}/trials), `search.repeats` of
    them: its keys must be train fields, a value of a ranged key must lie in its range, and the
    config must validate. ValueError names what is wrong."""
    if not params:
        raise ValueError("a point needs at least one train field")
    unknown = sorted(set(params) - set(TrainConfig.model_fields))
    if unknown:
        raise ValueError(f"point {params}: not train fields: {', '.join(unknown)}")
    for key, value in params.items():
        allowed = search.space.get(key)
        if isinstance(allowed, RangeSpec) and not (
            isinstance(value, int | float) and allowed.low <= value <= allowed.high
        ):
            raise ValueError(f"point {params}: {key} must lie in [{allowed.low}, {allowed.high}]")
    return repeats_of(point, first_index, params, train, search.repeats)
