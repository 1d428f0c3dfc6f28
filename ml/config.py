"""The parts of a job's spec (`ml.job.JobSpec`): what one trial trains with (`TrainConfig`), on
which data, over which search space, with which early-stopping rule.

The defaults of `TrainConfig` are the project's GPU recipe (CIFAR-stem ResNet-18, SGD+Nesterov,
one-cycle, label smoothing, EMA, flip TTA). They are the defaults in one place, with units.
`train.preset` picks a whole recipe (`PRESETS`: gpu, the default; cpu; report, the original
report's settings); the fields a spec gives explicitly override the preset's. Presets and the
batch-size scaling of `lr` are resolved when the spec is validated, so a stored spec shows the
values a trial really trains with (see `TrainConfig._resolve_preset`).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_TRIALS = 1000  # a sweep larger than this is refused (422)
# Upper bounds of the size fields, so no request can ask for an absurd allocation: CIFAR-10 has
# 50,000 training images, and a batch of 4096 already needs ~30 GB of activations for one step.
MAX_IMAGES = 50_000
MAX_BATCH_SIZE = 4096
CompileMode = Literal["default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune"]


class Strict(BaseModel):
    """Unknown fields are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class AugmentConfig(Strict):
    crop: bool = True  # random crop 32x32 from the image padded by `crop_padding` px (a random translate)
    flip: bool = True  # random horizontal flip, p = 0.5 (see flip_mode)
    cutout: Annotated[int, Field(ge=0, le=32)] = 0  # side of a zeroed square in px; 0 = off
    # --- options of the fast published CIFAR-10 recipes (bench/gpu.sh compares them) ---
    crop_padding: Annotated[int, Field(ge=1, le=8)] = 4  # the largest translation, px
    crop_fill: Literal["zeros", "reflect"] = "zeros"  # what the padding holds; reflect: the mirrored edge
    flip_mode: Literal["random", "alternate"] = "random"  # alternate: each image mirrored every other epoch


Preset = Literal["gpu", "cpu", "report"]


class TrainConfig(Strict):
    preset: Preset = "gpu"  # the recipe the unset fields come from (PRESETS); resolved at validation
    # --- model ---
    arch: Literal["resnet18", "resnet18_imagenet"] = "resnet18"  # CIFAR stem or torchvision's
    pretrained: bool = False  # ImageNet weights; resnet18_imagenet with batch norm only
    hidden_units: Annotated[int, Field(ge=0, le=8192)] = 0  # 0 = Linear(512, 10)
    norm: Literal["batch", "group"] = "batch"
    # --- optimisation ---
    epochs: Annotated[int, Field(ge=1, le=1000)] = 40
    # training images per epoch, a fresh random draw each epoch; None = the whole training set
    epoch_images: Annotated[int, Field(ge=1, le=MAX_IMAGES)] | None = None
    # the whole trial (set-up, training, every evaluation) within this many seconds: the trainer
    # measures its speed and plans epochs, epoch_images and batch_size (ml.plan); None = no budget
    time_budget_s: Annotated[float, Field(ge=10, le=7 * 24 * 3600)] | None = None
    batch_size: Annotated[int, Field(ge=1, le=MAX_BATCH_SIZE)] = 512  # global batch, never x n_gpus
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: Annotated[float, Field(gt=0, le=10)] = 0.4  # peak lr at lr_reference_batch; resolved: at batch_size
    # lr is scaled linearly from this batch to batch_size at validation; after it, equals batch_size
    lr_reference_batch: Annotated[int, Field(ge=1, le=MAX_BATCH_SIZE)] = 512
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    nesterov: bool = True
    weight_decay: Annotated[float, Field(ge=0, le=1)] = 5e-4
    schedule: Literal["onecycle", "cosine", "constant"] = "onecycle"
    warmup_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.15  # of all steps: linear rise to lr
    # the rise never reaches lr in fewer steps than this, however short the run (see ml.optim)
    warmup_min_steps: Annotated[int, Field(ge=0, le=100_000)] = 400
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.1
    augment: AugmentConfig = AugmentConfig(cutout=8)
    ema_decay: Annotated[float, Field(ge=0, lt=1)] = 0.999  # per step; 0 = no EMA of weights
    tta: bool = True  # evaluate on the image and its mirror, averaged
    tta_translate: Annotated[int, Field(ge=0, le=4)] = 0  # also on copies shifted +-n px (reflected); 0 = off
    # --- engine ---
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 on CUDA and AMX/AVX512-BF16 CPUs
    channels_last: bool = True
    compile: bool = False  # torch.compile; its time is reported apart from training
    compile_mode: CompileMode = "default"  # torch.compile's mode; reduce-overhead replays CUDA graphs
    fused: bool = False  # the optimiser's fused kernel: one launch updates every parameter
    parallel: Literal["auto", "none", "dataparallel", "ddp"] = "auto"  # auto: DP on >1 GPU
    deterministic: bool = False  # torch.use_deterministic_algorithms
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0

    @model_validator(mode="before")
    @classmethod
    def _resolve_preset(cls, data: Any) -> Any:
        """Fill the fields the input lacks from its preset, then scale lr to the batch size.

        Idempotent: a resolved config has every field and lr_reference_batch == batch_size, so
        validating it again (a stored spec, a resumed trial) changes nothing."""
        if not isinstance(data, dict) or data.get("preset", "gpu") not in PRESETS:
            return data  # a TrainConfig already, or a bad preset the field's validation reports
        given = dict(data)
        resolved = {**PRESETS[given.get("preset", "gpu")], **given}
        preset_augment = PRESETS[given.get("preset", "gpu")].get("augment")
        if isinstance(given.get("augment"), dict) and isinstance(preset_augment, dict):
            resolved["augment"] = {**preset_augment, **given["augment"]}  # one level deeper
        if "lr" in given and "lr_reference_batch" not in given:  # an explicit lr is the lr at batch_size
            default_batch = cls.model_fields["batch_size"].default
            resolved["lr_reference_batch"] = resolved.get("batch_size", default_batch)
        return _scale_lr(resolved)

    @model_validator(mode="after")
    def _pretrained_needs_imagenet_batchnorm(self) -> TrainConfig:
        if self.pretrained and (self.arch != "resnet18_imagenet" or self.norm != "batch"):
            raise ValueError("pretrained weights exist only for arch resnet18_imagenet with norm batch")
        if self.time_budget_s is not None and self.parallel == "ddp":
            # each rank would measure and plan on its own, and the plans could differ
            raise ValueError("time_budget_s is not supported with parallel 'ddp'")
        return self


def _scale_lr(values: dict[str, Any]) -> dict[str, Any]:
    """lr given for lr_reference_batch images becomes the lr for batch_size (the linear rule)."""
    defaults = TrainConfig.model_fields
    batch = values.get("batch_size", defaults["batch_size"].default)
    reference = values.get("lr_reference_batch", defaults["lr_reference_batch"].default)
    lr = values.get("lr", defaults["lr"].default)
    numbers = all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (batch, reference))
    if not numbers or isinstance(lr, bool) or not isinstance(lr, int | float):
        return values  # the fields' own validation reports the bad value
    if reference != batch:
        lr = lr * batch / reference
    return {**values, "lr": lr, "lr_reference_batch": batch}


# The original report's setup, for side-by-side comparisons (86.44 % after 50 epochs there).
REPORT_RECIPE: dict[str, Any] = {
    "arch": "resnet18_imagenet",
    "epochs": 50,
    "batch_size": 32,
    "optimizer": "sgd",
    "lr": 0.01,
    "momentum": 0.9,
    "nesterov": False,
    "weight_decay": 1e-6,
    "schedule": "constant",
    "warmup_fraction": 0.0,
    "label_smoothing": 0.0,
    "augment": {"crop": True, "flip": True, "cutout": 0},
    "ema_decay": 0.0,
    "tta": False,
    "warmup_min_steps": 0,
    "lr_reference_batch": 32,
}

# CPU recipe: the torchvision-stem network (15x fewer FLOPs than the CIFAR stem at 32x32), batch
# 256 (a CPU's throughput no longer grows past it), lr 0.2 (0.4 per 512, the GPU recipe's rule),
# and the light augmentation of the fast short-schedule recipes: translate by at most 2 px with
# reflected edges, flip every other epoch, no Cutout. A 10-minute trial is ~7 epochs on a 2-vCPU
# Xeon, where that augmentation measured +2.9 points over crop 4 + random flip. lr 0.4 at 256
# gained 1 point of validation accuracy at 7 epochs but lost 7 on one of two seeds at 3 epochs:
# 0.2 stays, for budgets of every length (docs/benchmarks.md, issue 12).
CPU_RECIPE: dict[str, Any] = {
    "arch": "resnet18_imagenet",
    "epochs": 10,
    "batch_size": 256,
    "lr": 0.2,
    "lr_reference_batch": 256,
    "warmup_min_steps": 100,
    "augment": {"cutout": 0, "crop_padding": 2, "crop_fill": "reflect", "flip_mode": "alternate"},
    "ema_decay": 0.99,
}

# What each preset sets; the rest comes from TrainConfig's field defaults (the GPU recipe).
PRESETS: dict[str, dict[str, Any]] = {"gpu": {}, "cpu": CPU_RECIPE, "report": REPORT_RECIPE}


class DataConfig(Strict):
    dataset: Literal["cifar10"] = "cifar10"
    val_size: Annotated[int, Field(ge=1, le=MAX_IMAGES)] = 5000  # held out of train, stratified and seeded
    split_seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0  # draws the validation split; not train.seed
    train_limit: Annotated[int, Field(ge=1, le=MAX_IMAGES)] | None = None  # stratified subset of train
    # all: every trial is tested at its end; best: only the job's selected trial, once every
    # trial has ended (selection uses validation only, either way)
    test: Literal["all", "best"] = "all"


class RangeSpec(Strict):
    """A continuous range for random search; grid search needs explicit lists."""

    low: float
    high: float
    log: bool = False
    integer: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> RangeSpec:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if not math.isfinite(self.high - self.low):
            # an infinite width would sample inf, which round() cannot turn into an int
            raise ValueError(f"low ({self.low}) and high ({self.high}) must span a finite width")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self


Choices = Annotated[list[Any], Field(min_length=1, max_length=MAX_TRIALS)]
SpaceValue = Choices | RangeSpec


# Strategies that choose each point from the results so far (ml.adaptive), one at a time.
ADAPTIVE = ("tpe", "cmaes")
# A choice the samplers can hold as is; other choices (lists, objects) are handled as JSON text.
SCALAR_CHOICE = (type(None), bool, int, float, str)


class SearchSpec(Strict):
    strategy: Literal["grid", "random", "tpe", "cmaes"] = "grid"
    space: dict[str, SpaceValue] = Field(default_factory=dict)  # keys are TrainConfig fields
    trials: Annotated[int, Field(ge=1, le=MAX_TRIALS)] | None = None  # points to try; not for grid
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0  # of the random, TPE and CMA-ES samplers
    # Runs per point, with train.seed, seed + 1, ...: a point's mean and spread show its noise.
    repeats: Annotated[int, Field(ge=1, le=20)] = 1

    @model_validator(mode="after")
    def _space_matches_strategy(self) -> SearchSpec:
        unknown = sorted(set(self.space) - set(TrainConfig.model_fields))
        if unknown:
            raise ValueError(f"search.space keys must be train fields; unknown: {', '.join(unknown)}")
        if "preset" in self.space:
            # a point is the base config with its keys replaced: the base's values would win
            raise ValueError("train.preset cannot be swept; submit one job per preset")
        if self.strategy == "grid":
            ranges = [k for k, v in self.space.items() if isinstance(v, RangeSpec)]
            if ranges:
                raise ValueError(f"grid search needs lists, not ranges, for: {', '.join(ranges)}")
            if self.trials is not None:
                raise ValueError(
                    "trials applies to random, tpe and cmaes search; a grid has one trial per point"
                )
        elif self.trials is None:
            raise ValueError(f"{self.strategy} search needs trials")
        if self.strategy in ADAPTIVE and not self.space:
            raise ValueError(f"{self.strategy} search needs a space to search")
        if self.repeats > 1 and "seed" in self.space:
            raise ValueError("repeats sets train.seed for each run of a point; do not also sweep seed")
        if self.trials is not None and self.trials * self.repeats > MAX_TRIALS:
            raise ValueError(
                f"trials x repeats is {self.trials * self.repeats}; at most {MAX_TRIALS} per job"
            )
        return self

    @property
    def adaptive(self) -> bool:
        return self.strategy in ADAPTIVE


class EarlyStoppingSpec(Strict):
    strategy: Literal["none", "asha", "median"] = "none"
    min_epochs: Annotated[int, Field(ge=1, le=1000)] = 1  # first rung (asha) / grace period (median)
    reduction_factor: Annotated[int, Field(ge=2, le=100)] = 3  # asha's eta
