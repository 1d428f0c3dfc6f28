"""train.preset and the linear lr rule: resolved once, at validation, and shown in the stored spec."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from ml.config import CPU_RECIPE, REPORT_RECIPE, SearchSpec, TrainConfig
from ml.job import JobSpec


def test_the_default_is_the_gpu_recipe_with_its_lr_at_its_batch() -> None:
    cfg = TrainConfig()
    assert (cfg.preset, cfg.arch, cfg.batch_size, cfg.lr, cfg.lr_reference_batch) == (
        "gpu",
        "resnet18",
        512,
        0.4,
        512,
    )
    assert cfg.warmup_min_steps > 0


def test_lr_follows_the_batch_size_linearly_unless_given() -> None:
    assert TrainConfig(batch_size=128).lr == pytest.approx(0.1)
    assert TrainConfig(batch_size=128).lr_reference_batch == 128  # resolved: lr is the lr at batch_size
    assert TrainConfig(batch_size=128, lr=0.3).lr == 0.3  # an explicit lr is kept as given
    assert TrainConfig(batch_size=128, lr=0.8, lr_reference_batch=512).lr == pytest.approx(0.2)


@pytest.mark.parametrize(
    "given", [{}, {"batch_size": 96}, {"preset": "cpu", "batch_size": 64}, {"preset": "report"}]
)
def test_validating_a_resolved_config_again_changes_nothing(given: dict) -> None:
    cfg = TrainConfig(**given)
    assert TrainConfig.model_validate(cfg.model_dump(mode="json")) == cfg


def cpu_lr_at(batch: int) -> float:
    """The cpu preset's lr at `batch`, by the linear rule (the expected value, written out)."""
    return CPU_RECIPE["lr"] * batch / CPU_RECIPE["lr_reference_batch"]


def test_presets_fill_what_the_spec_leaves_out() -> None:
    cpu = TrainConfig(preset="cpu")
    assert cpu.arch == CPU_RECIPE["arch"] and cpu.batch_size == CPU_RECIPE["batch_size"]
    assert cpu.augment.cutout == 0 and cpu.augment.flip  # the preset's augment, merged
    report = TrainConfig(preset="report")
    assert {k: getattr(report, k) for k in ("batch_size", "lr", "schedule", "warmup_min_steps")} == {
        k: REPORT_RECIPE[k] for k in ("batch_size", "lr", "schedule", "warmup_min_steps")
    }
    mixed = TrainConfig(preset="cpu", epochs=3, batch_size=512, augment={"flip": False})
    assert (mixed.epochs, mixed.arch, mixed.lr) == (3, "resnet18_imagenet", pytest.approx(cpu_lr_at(512)))
    assert not mixed.augment.flip and mixed.augment.cutout == 0
    assert (mixed.augment.crop_padding, mixed.augment.flip_mode) == (2, "alternate")  # kept from the preset


def test_the_stored_spec_shows_resolved_values() -> None:
    spec = JobSpec.model_validate({"train": {"preset": "cpu", "batch_size": 128}})
    stored = spec.model_dump(mode="json")["train"]
    assert stored["arch"] == "resnet18_imagenet" and stored["lr"] == pytest.approx(cpu_lr_at(128))
    assert JobSpec.model_validate(spec.model_dump(mode="json")) == spec


def test_an_unknown_preset_is_refused() -> None:
    with pytest.raises(ValidationError, match="preset"):
        TrainConfig(preset="tpu")


def test_sweeping_the_batch_scales_lr_and_sweeping_lr_does_not() -> None:
    spec = JobSpec.model_validate({"search": {"space": {"batch_size": [128, 512]}}})
    assert [p.config.lr for p in spec.points] == [pytest.approx(0.1), pytest.approx(0.4)]
    both = JobSpec.model_validate({"search": {"space": {"batch_size": [128], "lr": [0.05]}}})
    assert both.points[0].config.lr == 0.05


def test_a_preset_cannot_be_swept() -> None:
    with pytest.raises(ValidationError, match="preset cannot be swept"):
        SearchSpec(space={"preset": ["cpu", "gpu"]})
