"""One training recipe of bench/gpu.sh, to completion: a fixed number of epochs, selected on
validation, tested once.

    python bench/gpu_recipes.py --recipe default [--epochs N] [--test-curve] [--json FILE]
        [--seconds-left S --reference DEFAULT.json] [--data PATH] [--device auto|cpu|cuda]

`default` is `TrainConfig()` as shipped; every other recipe changes it as `RECIPES` says, with
the options the fast published ResNet-18 CIFAR-10 runs use. On the shared CIFAR-10 copy
(45,000 train / 5,000 validation / 10,000 test) it reports:
- `wall_seconds`: all of `run_trial` (set-up, compilation, every epoch with its validation and
  checkpoint, the final test), less the time of the test curve below; `train_seconds`: the
  epochs' own time; `compile_seconds`; training images/s; the GPU memory peak;
- the curve, epoch by epoch: loss, validation accuracy and, with --test-curve, the test accuracy
  of that epoch's weights. The test curve shows where accuracy stops improving; nothing is
  selected on it: the reported `test_accuracy` is the best validation epoch's, tested once;
- the best checkpoint evaluated again under each test-time augmentation (`TTA`): validation
  picks one, whose test accuracy is reported beside.

With --seconds-left the recipe first estimates its own time from the default recipe's result
(--reference) and is skipped, with the estimate recorded, when it would not end in time: a
recipe started and then killed costs the time of one that would have finished. The number of
epochs never depends on the machine's speed. --compile-backend eager (the dry run) has dynamo
capture the compiled recipes' graphs and run them as they are: inductor's C++ code generation
takes minutes on a small CPU, and on a GPU inductor generates Triton code instead anyway.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

START = time.perf_counter()
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script from anywhere

import torch  # noqa: E402

from bench.cifar10 import DEFAULT_CACHE, extracted, find_archive  # noqa: E402
from bench.train_throughput import machine, pick_device  # noqa: E402
from ml.checkpoint import load_checkpoint, load_for_inference  # noqa: E402
from ml.config import DataConfig, TrainConfig  # noqa: E402
from ml.data import MEAN, STD, Splits, load_dataset, make_splits  # noqa: E402
from ml.environment import determinism, precision_for  # noqa: E402
from ml.evaluate import evaluate  # noqa: E402
from ml.models import build_model  # noqa: E402
from ml.train import Decision, EpochMetrics, TrialHooks, run_trial  # noqa: E402

VAL_SIZE = 5000


@dataclass(frozen=True)
class Recipe:
    why: str
    changes: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields, over the defaults


AIRBENCH_AUGMENT = {"cutout": 12, "crop_fill": "reflect", "flip_mode": "alternate"}
RECIPES: dict[str, Recipe] = {
    "default": Recipe("TrainConfig() as shipped"),
    "compiled": Recipe("torch.compile (default mode) and fused SGD", {"compile": True, "fused": True}),
    "airbench_aug": Recipe(
        "label smoothing 0.2, Cutout 12, translate 4 (reflect), alternating flip, mirror + translate TTA",
        {"label_smoothing": 0.2, "augment": AIRBENCH_AUGMENT, "tta_translate": 1},
    ),
    "batch1024": Recipe("batch 1024, lr scaled linearly to 0.8", {"batch_size": 1024, "lr": 0.8}),
    "cudagraphs": Recipe(
        "torch.compile reduce-overhead (CUDA graphs) and fused SGD",
        {"compile": True, "compile_mode": "reduce-overhead", "fused": True},
    ),
    "epochs60": Recipe("60 epochs instead of 40", {"epochs": 60}),
    "label_smoothing": Recipe("label smoothing 0.2 instead of 0.1", {"label_smoothing": 0.2}),
    "cutout12_translate": Recipe(
        "Cutout 12 and a reflected translate of up to 4 px",
        {"augment": {"cutout": 12, "crop_fill": "reflect"}},
    ),
    "alternate_flip": Recipe(
        "each image mirrored every other epoch", {"augment": {"cutout": 8, "flip_mode": "alternate"}}
    ),
    "max_autotune": Recipe(
        "torch.compile max-autotune-no-cudagraphs and fused SGD",
        {"compile": True, "compile_mode": "max-autotune-no-cudagraphs", "fused": True},
    ),
}
# Compilation's time, by mode, for the estimate: the trained and the EMA network, and the
# evaluation's recompilation for the last, smaller batch of each set. Guesses for ResNet-18 on one
# H100/H200, until a GPU run measures them; a recipe whose compilation runs longer is killed by
# gpu.sh's timeout, not waited for.
COMPILE_ALLOWANCE = {
    "default": 120.0,
    "reduce-overhead": 150.0,
    "max-autotune-no-cudagraphs": 300.0,
    "max-autotune": 420.0,
}
# (name, tta, translate px): what the best checkpoint is evaluated with afterwards.
TTAS = (("none", False, 0), ("mirror", True, 0), ("mirror+translate1", True, 1))


def recipe_config(name: str, epochs: int | None = None) -> TrainConfig:
    changes = dict(RECIPES[name].changes)
    if epochs is not None:
        changes["epochs"] = epochs
    return TrainConfig(**changes)


# --- the time a recipe needs ----------------------------------------------------------------------


def estimate_seconds(cfg: TrainConfig, reference: dict[str, Any]) -> float:
    """This recipe's process time, from the default recipe's measured result: its start-up and
    fixed costs, its seconds per epoch times this recipe's epochs, plus compilation's allowance.
    Per epoch is taken as the default's: the variants change how it trains, not how much."""
    per_epoch = reference["train_seconds"] / reference["epochs_run"]
    fixed = reference["process_seconds"] - reference["train_seconds"] - reference["test_curve_seconds"]
    compile_seconds = COMPILE_ALLOWANCE[cfg.compile_mode] if cfg.compile else 0.0
    return fixed + cfg.epochs * per_epoch + compile_seconds


# --- hooks: progress lines and the test curve -----------------------------------------------------


class TestCurve:
    """The test accuracy of each epoch's evaluated weights, read back from last.pt."""

    def __init__(self, cfg: TrainConfig, splits: Splits, device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.net = build_model(cfg, len(splits.classes), allow_download=False).to(
            device=device, memory_format=memory_format
        )
        self.x, self.y = splits.test_x.to(device), splits.test_y.to(device)
        self.precision, _ = precision_for(cfg, device, training=False)
        self.seconds = 0.0

    def accuracy(self, last_checkpoint: Path) -> float:
        start = time.perf_counter()
        self.net.load_state_dict(load_checkpoint(last_checkpoint, self.device)["model"])
        cfg = self.cfg
        _, accuracy = evaluate(
            self.net,
            self.x,
            self.y,
            cfg.batch_size,
            MEAN,
            STD,
            cfg.tta,
            cfg.channels_last,
            self.precision,
            cfg.tta_translate,
        )
        self.seconds += time.perf_counter() - start
        return accuracy


class Progress(TrialHooks):
    """Prints every epoch as it ends and hands the curve so far to `save` (so a recipe cut short
    still leaves its curve); records the test curve when asked."""

    def __init__(
        self,
        out_dir: Path,
        epochs: int,
        test_curve: TestCurve | None,
        save: Callable[[list[dict[str, Any]]], None],
    ) -> None:
        self.out_dir, self.epochs, self.test_curve, self.save = out_dir, epochs, test_curve, save
        self.curve: list[dict[str, Any]] = []

    def epoch_end(self, metrics: EpochMetrics, history: list[EpochMetrics]) -> Decision:
        line = (
            f"  epoch {metrics.epoch}/{self.epochs}: loss {metrics.train_loss:.3f}, "
            f"val {metrics.val_accuracy:.4f}"
        )
        test_accuracy = None
        if self.test_curve is not None:
            test_accuracy = self.test_curve.accuracy(self.out_dir / "last.pt")
            line += f", test {test_accuracy:.4f}"
        print(f"{line}; {metrics.seconds:.2f} s, {metrics.images_per_second:.0f} img/s", flush=True)
        self.curve.append({**metrics.as_dict(), "test_accuracy": test_accuracy})
        self.save(self.curve)
        return Decision.CONTINUE


# --- the run ----------------------------------------------------------------------------------------


def load_splits(args: argparse.Namespace, seed: int) -> Splits:
    dataset = load_dataset("cifar10", extracted(find_archive(args.data), args.cache_dir), download=False)
    val_size = min(VAL_SIZE, len(dataset.train_y) // 10)  # smaller only for the dry run's tiny archive
    return make_splits(dataset, DataConfig(val_size=val_size), seed=seed)


def run_recipe(
    name: str,
    cfg: TrainConfig,
    splits: Splits,
    device: torch.device,
    test_curve: bool,
    save: Callable[[list[dict[str, Any]]], None],
) -> dict[str, Any]:
    device_ids = [device.index or 0] if device.type == "cuda" else []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with tempfile.TemporaryDirectory(prefix=f"recipe-{name}-") as tmp:  # $TMPDIR: /dev/shm in gpu.sh
        out_dir = Path(tmp)
        curve = TestCurve(cfg, splits, device) if test_curve else None
        hooks = Progress(out_dir, cfg.epochs, curve, save)
        start = time.perf_counter()
        result = run_trial(cfg, splits, out_dir, hooks, device_ids=device_ids, allow_download=False)
        wall = time.perf_counter() - start - (curve.seconds if curve else 0.0)
        memory = _gpu_memory(device)
        ttas = tta_table(out_dir / "best.pt", splits, device, cfg)
    history = result.history
    chosen = max(ttas, key=lambda t: t["val_accuracy"])  # the first of equals: the cheaper TTA
    return {
        "wall_seconds": wall,
        "train_seconds": sum(m.seconds for m in history),
        "test_curve_seconds": curve.seconds if curve else 0.0,
        "compile_seconds": result.environment.get("compile_seconds"),
        "epochs_run": len(history),
        "images_per_second": statistics.median(m.images_per_second for m in history),
        "gpu_memory_mib": memory,
        "best_epoch": result.best_epoch,
        "best_val_accuracy": result.best_val_accuracy,
        "test_accuracy": result.test_accuracy,
        "curve": hooks.curve,
        "tta": ttas,
        "tta_chosen": {"tta": chosen["tta"], "test_accuracy": chosen["test_accuracy"]},
        "environment": result.environment,
    }


def tta_table(best: Path, splits: Splits, device: torch.device, cfg: TrainConfig) -> list[dict[str, Any]]:
    """The best checkpoint's validation and test accuracy under each of TTAS."""
    net, _ = load_for_inference(best, device)
    precision, _ = precision_for(cfg, device, training=False)
    rows = []
    for name, mirror, translate_px in TTAS:
        row: dict[str, Any] = {"tta": name}
        for split in ("val", "test"):
            x, y = getattr(splits, f"{split}_x").to(device), getattr(splits, f"{split}_y").to(device)
            _, accuracy = evaluate(
                net, x, y, cfg.batch_size, MEAN, STD, mirror, cfg.channels_last, precision, translate_px
            )
            row[f"{split}_accuracy"] = accuracy
        rows.append(row)
    return rows


def _gpu_memory(device: torch.device) -> dict[str, float] | None:
    if device.type != "cuda":
        return None
    mib = 2**20
    return {
        "peak_allocated": torch.cuda.max_memory_allocated(device) / mib,
        "peak_reserved": torch.cuda.max_memory_reserved(device) / mib,
        "total": torch.cuda.get_device_properties(device).total_memory / mib,
    }


def use_compile_backend(backend: str) -> None:
    """Every torch.compile of this process with `backend` instead of inductor (see the docstring)."""
    compile_ = torch.compile

    def compile_with(model: Any, **kwargs: Any) -> Any:
        kwargs.pop("mode", None)  # the modes are inductor's
        return compile_(model, backend=backend, **kwargs)

    torch.compile = compile_with  # type: ignore[assignment]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="default")
    parser.add_argument("--data-only", action="store_true", help="extract and decode the data; no training")
    parser.add_argument("--epochs", type=int, default=None, help="instead of the recipe's (the dry run)")
    parser.add_argument("--test-curve", action="store_true", help="test accuracy after every epoch")
    parser.add_argument(
        "--seconds-left", type=float, default=None, help="skip the recipe if it would not fit"
    )
    parser.add_argument(
        "--reference", type=Path, default=None, help="the default recipe's --json, to estimate"
    )
    parser.add_argument("--compile-backend", default=None, help="instead of inductor (the dry run: eager)")
    parser.add_argument("--data", type=Path, default=None, help="the CIFAR-10 JPEG .tar.gz")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="where it is extracted")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    args = parser.parse_args(argv)

    if args.data_only:
        splits = load_splits(args, seed=0)
        print(f"CIFAR-10: {len(splits.train_y)} train, {len(splits.val_y)} val, {len(splits.test_y)} test")
        return
    cfg = recipe_config(args.recipe, args.epochs)
    device = pick_device(args.device)
    result: dict[str, Any] = {
        "recipe": args.recipe,
        "why": RECIPES[args.recipe].why,
        "config": cfg.model_dump(mode="json"),
        "machine": machine(device),
    }
    print(f"{args.recipe}: {result['why']}; {cfg.epochs} epochs, batch {cfg.batch_size}", flush=True)
    skip = _skip_reason(cfg, args)
    if skip:
        print(f"  skipped: {skip}", flush=True)
        _write(args.json, {**result, "skipped": skip})
        return
    if args.compile_backend:
        use_compile_backend(args.compile_backend)
    try:
        splits = load_splits(args, cfg.seed)

        def save_unfinished(curve: list[dict[str, Any]]) -> None:
            unfinished = f"unfinished: {len(curve)} of {cfg.epochs} epochs"
            _write(args.json, {**result, "curve": curve, "error": unfinished})

        with determinism(False, device):  # cudnn autotuning on, as in a trial
            result.update(run_recipe(args.recipe, cfg, splits, device, args.test_curve, save_unfinished))
    except Exception as exc:
        traceback.print_exc()
        _write(args.json, {**result, "error": f"{type(exc).__name__}: {exc}"})
        sys.exit(1)
    result["process_seconds"] = time.perf_counter() - START
    _write(args.json, result)
    print(
        f"  {args.recipe}: test accuracy {result['test_accuracy']:.4f} (best val "
        f"{result['best_val_accuracy']:.4f} at epoch {result['best_epoch']}/{result['epochs_run']}); "
        f"{result['wall_seconds']:.1f} s wall, {result['train_seconds']:.1f} s of epochs",
        flush=True,
    )


def _skip_reason(cfg: TrainConfig, args: argparse.Namespace) -> str | None:
    if args.seconds_left is None:
        return None
    if args.reference is None or not args.reference.is_file():
        return None  # nothing to estimate from: gpu.sh's timeout still bounds it
    reference = json.loads(args.reference.read_text())
    if "train_seconds" not in reference:
        return None
    needed = estimate_seconds(cfg, reference)
    if needed > args.seconds_left:
        return f"needs about {needed:.0f} s, {args.seconds_left:.0f} s left"
    return None


def _write(path: Path | None, result: dict[str, Any]) -> None:
    if path is not None:  # whole or not at all: gpu.sh's timeout may kill this process any time
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(result, indent=2))
        temporary.replace(path)


if __name__ == "__main__":
    main()
