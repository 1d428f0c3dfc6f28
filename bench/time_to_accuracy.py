"""Best test accuracy within a wall-clock budget: the default recipe against the report's.

    python bench/time_to_accuracy.py [--budget-seconds 600] [--recipes default,report] [--json FILE]

For each recipe, on the shared CIFAR-10 copy (45,000 train / 5,000 validation / 10,000 test):
1. probe: `ml.plan.measure`, the trainer's own measurement: a few training steps and a
   validation slice of this recipe on this device;
2. plan: `ml.plan.plan`, the trainer's own planner (what `train.time_budget_s` does): the
   recipe's own epochs on all 45,000 images if they fit in the budget; else the training time
   the evaluations leave, spread over as many epochs as it takes to see every image (a fresh
   random draw of `epoch_images` each epoch when the last would not fit whole). The schedule
   (warm-up, one-cycle) is laid out over the planned epochs, so it completes;
3. train with `ml.train.run_trial`: the checkpoint with the best validation accuracy is tested
   once on the 10,000 test images. A guard stops before an epoch that would end past the budget
   (the best checkpoint so far is still tested). The budget covers the whole `run_trial`; the
   probe is reported apart.

Recipes: `cpu` (preset cpu); `default` (TrainConfig(): CIFAR-stem ResNet-18, batch 512,
SGD+Nesterov, one-cycle, label smoothing, cutout, EMA, flip TTA); `report`
(ml.config.REPORT_RECIPE: torchvision stem, batch 32, SGD 0.01, constant);
`default_imagenet_stem` (the default recipe on the report's cheaper torchvision-stem network, to
separate the recipe from the network's cost).
`--complete` skips the planning and trains each recipe's own epochs on all images (bench/gpu.sh).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script from anywhere


from bench.cifar10 import DEFAULT_CACHE, extracted, find_archive  # noqa: E402
from bench.train_throughput import machine, pick_device, report  # noqa: E402
from ml.config import REPORT_RECIPE, DataConfig, TrainConfig  # noqa: E402
from ml.data import Dataset, load_dataset, make_splits  # noqa: E402
from ml.engine import train_one_epoch  # noqa: E402
from ml.environment import determinism, select_runtime  # noqa: E402
from ml.plan import DoesNotFit, Plan, Speed, measure, plan  # noqa: E402
from ml.train import Decision, EpochMetrics, TrialHooks, run_trial  # noqa: E402

RECIPES: dict[str, dict[str, Any]] = {
    "default": {},
    "cpu": {"preset": "cpu"},
    "report": REPORT_RECIPE,
    "default_imagenet_stem": {"arch": "resnet18_imagenet"},
}
VAL_SIZE = 5000


def probe(cfg: TrainConfig, dataset: Dataset, device_ids: list[int], seconds: float) -> Speed:
    """The trainer's own measurement (ml.plan.measure), on this recipe and device."""
    start = time.perf_counter()
    splits = make_splits(dataset, DataConfig(val_size=_val_size(dataset)))
    speed = measure(cfg, splits, select_runtime(cfg, device_ids), False, seconds, train_one_epoch)
    speed.seconds = time.perf_counter() - start  # with the split, which the budget does not cover
    return speed


class BudgetGuard(TrialHooks):
    """Stops before an epoch that would end past the deadline; the best checkpoint is still tested."""

    def __init__(self, deadline: float, epochs: int) -> None:
        self.deadline, self.epochs, self.fired = deadline, epochs, False

    def epoch_end(self, metrics: EpochMetrics, history: list[EpochMetrics]) -> Decision:
        if metrics.epoch < self.epochs and time.monotonic() + metrics.seconds > self.deadline:
            self.fired = True
            return Decision.PRUNE
        return Decision.CONTINUE


def run_recipe(name: str, dataset: Dataset, device_ids: list[int], args: Any) -> dict[str, Any]:
    cfg = TrainConfig(**RECIPES[name])
    print(f"{name}: {cfg.arch}, batch {cfg.batch_size}, lr {cfg.lr}, {cfg.schedule}", flush=True)
    n_train, n_val = len(dataset.train_y) - _val_size(dataset), _val_size(dataset)
    measured, chosen = None, Plan(cfg.epochs, n_train, cfg.batch_size, math.nan, math.nan, None)
    if not args.complete:
        measured = probe(cfg, dataset, device_ids, args.probe_seconds)
        print(f"  probe: {measured}", flush=True)
        try:
            chosen = plan(cfg, measured, args.budget_seconds, n_train, n_val, len(dataset.test_y))
        except DoesNotFit as exc:
            print(f"  {name}: {exc}", flush=True)
            return {"recipe": name, "probe": asdict(measured), "does_not_fit": str(exc)}
        print(f"  plan: {chosen}", flush=True)
    cfg = chosen.apply(cfg, n_train)
    done = train_planned(cfg, chosen, dataset, device_ids, args)
    print(
        f"  {name}: test accuracy {done['test_accuracy']:.4f} (best val {done['best_val_accuracy']:.4f} "
        f"at epoch {done['best_epoch']}/{done['epochs_run']}), {done['wall_seconds']:.0f} s",
        flush=True,
    )
    return {"recipe": name, "probe": asdict(measured) if measured else None, "plan": asdict(chosen), **done}


def train_planned(
    cfg: TrainConfig, chosen: Plan, dataset: Dataset, device_ids: list[int], args: Any
) -> dict[str, Any]:
    """run_trial on the planned epochs and images; selects on validation, tests once."""
    splits = make_splits(dataset, DataConfig(val_size=_val_size(dataset)))
    deadline = time.monotonic() + (math.inf if args.complete else args.budget_seconds)
    guard = BudgetGuard(deadline, cfg.epochs)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out_dir:
        result = run_trial(cfg, splits, Path(out_dir), guard, device_ids=device_ids, allow_download=False)
    return {
        "config": cfg.model_dump(mode="json"),
        "wall_seconds": time.perf_counter() - start,
        "train_seconds": sum(m.seconds for m in result.history),  # training + validation, per epoch
        "epochs_run": len(result.history),
        "stopped_by_budget": guard.fired,
        "best_epoch": result.best_epoch,
        "best_val_accuracy": result.best_val_accuracy,
        "test_accuracy": result.test_accuracy,
        "history": [m.as_dict() for m in result.history],
        "environment": result.environment,
    }


def _val_size(dataset: Dataset) -> int:
    return min(VAL_SIZE, len(dataset.train_y) // 10)  # smaller only for tiny smoke-test data


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-seconds", type=float, default=600.0, help="per recipe")
    parser.add_argument("--recipes", default="default,report", help=f"comma-separated: {', '.join(RECIPES)}")
    parser.add_argument("--complete", action="store_true", help="each recipe's own epochs, no budget")
    parser.add_argument("--probe-seconds", type=float, default=15.0)
    parser.add_argument("--data", type=Path, default=None, help="the CIFAR-10 JPEG .tar.gz")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="where it is extracted")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.recipes.split(",") if n.strip()]
    unknown = sorted(set(names) - set(RECIPES))
    if unknown:
        parser.error(f"unknown recipes {unknown}; known: {', '.join(RECIPES)}")
    device = pick_device(args.device)
    dataset = load_dataset("cifar10", extracted(find_archive(args.data), args.cache_dir), download=False)
    results: dict[str, Any] = {"machine": machine(device), "budget_seconds": args.budget_seconds}
    with determinism(False, device):
        device_ids = [0] if device.type == "cuda" else []
        results["recipes"] = [run_recipe(n, dataset, device_ids, args) for n in names]
    report(results, print_summary, args.json)


def print_summary(results: dict[str, Any]) -> None:
    m = results["machine"]
    print(f"\n{m['date']}: {m['device']}, {m['threads']} threads, torch {m['torch']}")
    before, after = m["load_average"][0], m["load_average_after"][0]
    print(f"budget {results['budget_seconds']:.0f} s per recipe; load average {before:.1f} -> {after:.1f}\n")
    print("| recipe | epochs x train images | wall s | s per epoch | best val (epoch) | test accuracy |")
    print("|---|---|---:|---:|---|---:|")
    for r in results["recipes"]:
        if "does_not_fit" in r:
            print(f"| {r['recipe']} | does not fit: {r['does_not_fit']} | | | | |")
            continue
        plan_ = r["plan"]
        stopped = " (budget guard)" if r["stopped_by_budget"] else ""
        print(
            f"| {r['recipe']} | {r['epochs_run']}/{plan_['epochs']} x {plan_['epoch_images']}{stopped} | "
            f"{r['wall_seconds']:.0f} | {r['train_seconds'] / r['epochs_run']:.2f} | "
            f"{r['best_val_accuracy']:.4f} ({r['best_epoch']}) | "
            f"{r['test_accuracy']:.4f} |"
        )
    by_name = {r["recipe"]: r.get("test_accuracy") for r in results["recipes"]}
    if by_name.get("default") is not None and by_name.get("report") is not None:
        print(f"\ndefault - report: {100 * (by_name['default'] - by_name['report']):+.1f} points")


if __name__ == "__main__":
    main()
