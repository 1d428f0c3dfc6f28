"""ml.adaptive: TPE/CMA-ES points from the results so far, and the Optuna study export."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import optuna
import pytest

from ml import adaptive
from ml.adaptive import Observation, startup_trials, suggest, write_study
from ml.config import SearchSpec
from ml.job import JobSpec
from ml.search import expand

BEST_LR, BEST_WD = 0.03, 1e-4
SPACE = {
    "lr": {"low": 1e-4, "high": 1.0, "log": True},
    "weight_decay": {"low": 1e-6, "high": 1e-2, "log": True},
}


def objective(params: dict[str, float]) -> float:
    """A cheap stand-in for validation accuracy: one smooth peak in log space."""
    return (
        0.9
        - 0.05 * (math.log10(params["lr"] / BEST_LR) ** 2)
        - 0.02 * math.log10(params["weight_decay"] / BEST_WD) ** 2
    )


def search(strategy: str, trials: int = 20, seed: int = 0) -> SearchSpec:
    return SearchSpec.model_validate({"strategy": strategy, "space": SPACE, "trials": trials, "seed": seed})


def run_adaptive(spec: SearchSpec) -> list[dict[str, float]]:
    seen: list[Observation] = []
    for _ in range(spec.trials or 0):
        params = suggest(spec, seen)
        seen.append(Observation(params, "complete", objective(params)))
    return [o.params for o in seen]


def later_half_distance(points: list[dict[str, float]]) -> float:
    """How far (in decades) the later half's lr is from the best lr found."""
    best = max(points, key=objective)
    later = points[len(points) // 2 :]
    return statistics.fmean(abs(math.log10(p["lr"] / best["lr"])) for p in later)


def test_tpe_concentrates_nearer_the_best_than_random_search() -> None:
    tpe, rnd = [], []
    for seed in range(8):
        tpe.append(later_half_distance(run_adaptive(search("tpe", seed=seed))))
        random_points = [p.params for p in expand(search("random", seed=seed), JobSpec().train)]
        rnd.append(later_half_distance(random_points))
    assert statistics.fmean(tpe) < 0.75 * statistics.fmean(rnd), (tpe, rnd)
    assert sum(t < r for t, r in zip(tpe, rnd, strict=True)) >= 6


def test_points_lie_in_the_space_and_repeat_with_the_seed() -> None:
    spec = search("tpe", trials=12, seed=3)
    first, again = run_adaptive(spec), run_adaptive(spec)
    assert first == again
    assert all(1e-4 <= p["lr"] <= 1.0 and 1e-6 <= p["weight_decay"] <= 1e-2 for p in first)
    assert len({p["lr"] for p in first}) == 12
    assert run_adaptive(search("tpe", trials=12, seed=4)) != first


def test_cmaes_and_choices_that_are_not_scalars() -> None:
    spec = SearchSpec.model_validate(
        {
            "strategy": "cmaes",
            "trials": 6,
            "space": {"lr": {"low": 0.01, "high": 0.5}, "augment": [{"cutout": 0}, {"cutout": 8}]},
        }
    )
    seen: list[Observation] = []
    for _ in range(6):
        params = suggest(spec, seen)
        assert params["augment"] in ({"cutout": 0}, {"cutout": 8})
        seen.append(Observation(params, "complete", params["lr"]))
    assert startup_trials(spec) == 3


def test_running_pruned_and_foreign_points_are_told_without_error() -> None:
    spec = search("tpe", trials=8)
    seen = [
        Observation({"lr": 0.1, "weight_decay": 1e-4}, "running", None),
        Observation({"lr": 0.01, "weight_decay": 1e-4}, "pruned", None, curve=[0.2, 0.3]),
        Observation({"lr": 0.02, "weight_decay": 1e-5}, "failed", None),
        Observation({"lr": 5.0, "weight_decay": 1e-4}, "complete", 0.5),  # outside the space: left out
    ]
    params = suggest(spec, seen)
    assert set(params) == {"lr", "weight_decay"}


def test_the_exported_study_opens_in_optuna(tmp_path: Path) -> None:
    spec = search("tpe", trials=3)
    seen = [
        Observation(
            {"lr": 0.1, "weight_decay": 1e-4}, "complete", 0.8, curve=[0.5, 0.8], attrs={"trial_ids": [7]}
        ),
        Observation({"lr": 0.01, "weight_decay": 1e-3}, "pruned", None, curve=[0.3]),
    ]
    path = tmp_path / "study.db"
    write_study(path, "job 1", spec, seen)
    study = optuna.load_study(study_name="job 1", storage=f"sqlite:///{path}")
    complete, pruned = study.trials
    assert (complete.state, complete.value, complete.params) == (
        optuna.trial.TrialState.COMPLETE,
        0.8,
        seen[0].params,
    )
    assert complete.intermediate_values == {1: 0.5, 2: 0.8}
    assert complete.user_attrs == {"trial_ids": [7]}
    assert pruned.state == optuna.trial.TrialState.PRUNED
    assert study.best_trial.number == 0


@pytest.mark.parametrize(
    ("search_body", "message"),
    [
        ({"strategy": "tpe", "space": SPACE}, "needs trials"),
        ({"strategy": "tpe", "trials": 4}, "needs a space"),
        ({"strategy": "tpe", "trials": 4, "space": {"seed": [1, 2]}, "repeats": 2}, "do not also sweep seed"),
        ({"strategy": "tpe", "trials": 500, "space": SPACE, "repeats": 3}, "at most 1000"),
        (
            {
                "strategy": "tpe",
                "trials": 4,
                "space": {"batch_size": {"low": 1, "high": 10**6, "integer": True}},
            },
            "batch_size",
        ),
    ],
)
def test_bad_adaptive_searches_are_refused_at_submission(search_body: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        JobSpec.model_validate({"search": search_body})


def test_repeats_run_each_point_with_successive_seeds() -> None:
    spec = JobSpec.model_validate(
        {"search": {"space": {"lr": [0.1, 0.2]}, "repeats": 3}, "train": {"seed": 5, "epochs": 1}}
    )
    assert [(p.index, p.point, p.params["lr"], p.config.seed) for p in spec.points] == [
        (0, 0, 0.1, 5), (1, 0, 0.1, 6), (2, 0, 0.1, 7), (3, 1, 0.2, 5), (4, 1, 0.2, 6), (5, 1, 0.2, 7)
    ]  # fmt: skip
    assert JobSpec.model_validate({"search": {"strategy": "tpe", "trials": 5, "space": SPACE}}).points == []


def test_a_failing_sampler_falls_back_to_a_random_point(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(optuna.samplers.RandomSampler):
        def sample_independent(self, *_args: object, **_kwargs: object) -> None:
            raise RuntimeError("sampler bug")

    monkeypatch.setattr(adaptive, "_sampler", lambda *_: Broken())
    spec = search("tpe", trials=8)
    seen = [Observation({"lr": 0.1 * (i + 1), "weight_decay": 1e-4}, "complete", 0.5) for i in range(5)]
    params = suggest(spec, seen)
    assert 1e-4 <= params["lr"] <= 1.0 and 1e-6 <= params["weight_decay"] <= 1e-2
    assert "the tpe sampler failed" in caplog.text
