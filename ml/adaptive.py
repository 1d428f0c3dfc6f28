"""Model-based search (TPE, CMA-ES) through Optuna's ask-and-tell interface.

The database stays the one source of truth: each time a worker can take a new trial of a `tpe`
or `cmaes` job, the caller rebuilds an in-memory study from the job's trials (`Observation`s)
and asks it for one point (`suggest`). Nothing of Optuna's is stored. Running points are told
as running, and TPE's constant liar keeps concurrent workers from asking the same place twice;
pruned points are told as pruned, with their curves. `write_study` exports a job as an Optuna
study file (for optuna-dashboard and Optuna's own analysis tools).
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, TrialState

from ml.config import SCALAR_CHOICE, RangeSpec, SearchSpec

optuna.logging.set_verbosity(optuna.logging.WARNING)  # no line per trial in the worker's log
log = logging.getLogger(__name__)

State = Literal["complete", "pruned", "failed", "running"]
STATES: dict[State, TrialState] = {
    "complete": TrialState.COMPLETE,
    "pruned": TrialState.PRUNED,
    "failed": TrialState.FAIL,
    "running": TrialState.RUNNING,
}


@dataclass(frozen=True)
class Observation:
    """One point of a job as the sampler sees it (its repeats already averaged)."""

    params: dict[str, Any]  # the swept keys, as stored
    state: State
    value: float | None  # validation accuracy (the mean of finished repeats); None unless complete/pruned
    curve: Sequence[float] = ()  # validation accuracy per epoch, for pruned points
    attrs: dict[str, Any] = field(default_factory=dict)  # shown by the study's viewers (trial ids, test)


def startup_trials(search: SearchSpec) -> int:
    """Random points before the model takes over: a quarter of the budget, within 3..10."""
    return min(10, max(3, (search.trials or 0) // 4))


def suggest(search: SearchSpec, observations: Sequence[Observation]) -> dict[str, Any]:
    """The next point to try, given every point so far. Reproducible: the sampler's seed is
    `search.seed` plus the number of points already asked."""
    distributions = distributions_of(search.space)
    trials = frozen_trials(observations, distributions)
    try:
        asked = _ask(_sampler(search, len(observations)), trials, distributions)
    except Exception:  # a sampler's bug must not stop every worker's claims: fall back to random
        log.exception("the %s sampler failed; this point is sampled at random", search.strategy)
        asked = _ask(
            optuna.samplers.RandomSampler(seed=search.seed + len(observations)), trials, distributions
        )
    return {key: _decode(search.space[key], asked[key]) for key in search.space}


def _ask(
    sampler: optuna.samplers.BaseSampler,
    trials: list[FrozenTrial],
    distributions: dict[str, BaseDistribution],
) -> dict[str, Any]:
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.add_trials(trials)
    return study.ask(distributions).params


def distributions_of(space: dict[str, Any]) -> dict[str, BaseDistribution]:
    return {key: _distribution(value) for key, value in space.items()}


def _distribution(value: list[Any] | RangeSpec) -> BaseDistribution:
    if isinstance(value, list):
        return CategoricalDistribution(_encoded_choices(value))
    if value.integer:
        return IntDistribution(round(value.low), round(value.high), log=value.log)
    return FloatDistribution(value.low, value.high, log=value.log)


def _encoded_choices(choices: list[Any]) -> list[Any]:
    if all(isinstance(c, SCALAR_CHOICE) for c in choices):
        return list(dict.fromkeys(choices))  # Optuna wants each choice once
    return list(dict.fromkeys(_as_json(c) for c in choices))


def _as_json(choice: Any) -> str:
    return json.dumps(choice, sort_keys=True, separators=(",", ":"))


def _decode(value: list[Any] | RangeSpec, chosen: Any) -> Any:
    """A sampled value as the trial's config takes it (JSON text back to its list or object)."""
    if isinstance(value, list) and not all(isinstance(c, SCALAR_CHOICE) for c in value):
        return json.loads(chosen)
    return chosen


def _sampler(search: SearchSpec, asked: int) -> optuna.samplers.BaseSampler:
    seed = search.seed + asked
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # constant_liar
        if search.strategy == "cmaes":
            # Categorical keys are sampled independently (CMA-ES is for continuous spaces).
            return optuna.samplers.CmaEsSampler(
                seed=seed, n_startup_trials=startup_trials(search), warn_independent_sampling=False
            )
        return optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=startup_trials(search), constant_liar=True
        )


def frozen_trials(
    observations: Sequence[Observation], distributions: dict[str, BaseDistribution]
) -> list[FrozenTrial]:
    """The observations as Optuna trials; a point outside the space (added by hand) is left out."""
    trials = []
    for obs in observations:
        params = _params_within(obs.params, distributions)
        if params is None:
            continue
        complete = obs.state == "complete"
        trials.append(
            optuna.trial.create_trial(
                state=STATES[obs.state],
                value=obs.value if complete else None,
                params=params,
                distributions=distributions,
                intermediate_values={epoch: acc for epoch, acc in enumerate(obs.curve, start=1)},
                user_attrs=obs.attrs,
            )
        )
    return trials


def _params_within(
    params: dict[str, Any], distributions: dict[str, BaseDistribution]
) -> dict[str, Any] | None:
    encoded = {}
    for key, dist in distributions.items():
        if key not in params:
            return None
        value = params[key]
        if isinstance(dist, CategoricalDistribution) and value not in dist.choices:
            value = _as_json(value)
        try:
            if not dist._contains(dist.to_internal_repr(value)):
                return None
        except (ValueError, TypeError):
            return None
        encoded[key] = value
    return encoded


def write_study(path: Path, name: str, search: SearchSpec, observations: Sequence[Observation]) -> None:
    """Write a job as an Optuna study in an SQLite file (Optuna's RDB storage) at `path`."""
    storage = optuna.storages.RDBStorage(f"sqlite:///{path}")
    try:
        study = optuna.create_study(storage=storage, study_name=name, direction="maximize")
        study.set_user_attr("strategy", search.strategy)
        study.add_trials(frozen_trials(observations, distributions_of(search.space)))
    finally:
        storage.remove_session()
        storage.engine.dispose()
