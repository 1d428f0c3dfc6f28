"""Search-space expansion and spec validation: the one grammar for grid and random search."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from ml.config import MAX_TRIALS, REPORT_RECIPE, TrainConfig
from ml.job import JobSpec


def test_grid_is_the_cartesian_product_over_the_base_config() -> None:
    spec = JobSpec.model_validate(
        {
            "search": {"space": {"lr": [0.001, 0.01, 0.1], "weight_decay": [1e-4, 1e-5, 1e-6]}},
            "train": {"epochs": 3, "batch_size": 64},
        }
    )
    points = spec.points
    assert len(points) == 9
    assert [p.index for p in points] == list(range(9))
    assert points[4].params == {"lr": 0.01, "weight_decay": 1e-5}
    assert points[4].config.lr == 0.01 and points[4].config.weight_decay == 1e-5
    assert all(p.config.epochs == 3 and p.config.batch_size == 64 for p in points)


def test_empty_space_is_one_trial_with_the_base_config() -> None:
    (point,) = JobSpec().points
    assert point.params == {} and point.config == TrainConfig()


def test_random_search_is_reproducible_from_its_seed() -> None:
    body = {
        "search": {
            "strategy": "random",
            "trials": 20,
            "seed": 7,
            "space": {"lr": {"low": 1e-4, "high": 0.3, "log": True}, "norm": ["batch", "group"]},
        }
    }
    first = [p.params for p in JobSpec.model_validate(body).points]
    again = [p.params for p in JobSpec.model_validate(body).points]
    body["search"]["seed"] = 8
    other = [p.params for p in JobSpec.model_validate(body).points]
    assert first == again and first != other
    assert len(first) == 20
    assert all(1e-4 <= p["lr"] <= 0.3 and p["norm"] in ("batch", "group") for p in first)
    assert {p["norm"] for p in first} == {"batch", "group"}


def test_integer_ranges_give_integers() -> None:
    spec = JobSpec.model_validate(
        {
            "search": {
                "strategy": "random",
                "trials": 5,
                "space": {"epochs": {"low": 1, "high": 4, "integer": True}},
            }
        }
    )
    assert all(isinstance(p.config.epochs, int) and 1 <= p.config.epochs <= 4 for p in spec.points)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"search": {"space": {"lr": [-0.1]}}}, "lr"),
        ({"search": {"space": {"learning_rate": [0.1]}}}, "learning_rate"),
        ({"search": {"space": {"lr": []}}}, "at least 1"),
        ({"search": {"space": {"lr": {"low": 0.1, "high": 0.2}}}}, "grid search needs lists"),
        ({"search": {"strategy": "random", "space": {"lr": [0.1]}}}, "needs trials"),
        ({"search": {"space": {"lr": [0.1] * 40, "epochs": list(range(1, 31))}}}, f"at most {MAX_TRIALS}"),
        ({"train": {"epochs": 0}}, "epochs"),
        ({"train": {"optimiser": "sgd"}}, "optimiser"),
        ({"train": {"pretrained": True}}, "pretrained"),
        (
            {
                "search": {
                    "strategy": "random",
                    "trials": 2,
                    "space": {"lr": {"low": 0, "high": 1, "log": True}},
                }
            },
            "log",
        ),
    ],
)
def test_bad_specs_say_what_is_wrong(body: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        JobSpec.model_validate(body)


def test_the_original_report_recipe_stays_expressible() -> None:
    config = TrainConfig.model_validate(REPORT_RECIPE)
    assert (config.arch, config.batch_size, config.lr, config.weight_decay) == (
        "resnet18_imagenet",
        32,
        0.01,
        1e-6,
    )


def test_digest_ignores_key_order_but_not_values() -> None:
    a = JobSpec.model_validate({"train": {"lr": 0.1, "epochs": 2}})
    b = JobSpec.model_validate({"train": {"epochs": 2, "lr": 0.1}})
    c = JobSpec.model_validate({"train": {"epochs": 2, "lr": 0.2}})
    assert a.digest() == b.digest() != c.digest()
