"""TPE against random search on CIFAR-10, same budget, same space, trials interleaved.

    python bench/tpe_vs_random.py [--data ../shared/datasets/cifar10-jpeg.tar.gz] [--trials 12]
        [--epochs 2] [--train-limit 5000] [--val-size 1000] [--json FILE]

Both searches tune lr (1e-4..1, log) and weight_decay (1e-6..1e-2, log) of the torchvision-stem
ResNet-18 (SGD + Nesterov, one-cycle) on a stratified `--train-limit` subset, for `--trials`
trials each. Trials alternate (tpe 1, random 1, tpe 2, ...) so that a busy machine slows both
alike. TPE gets its points from `ml.adaptive.suggest` exactly as a worker does; random search
from `ml.search.expand`. Each trial is selected on validation and tested once (10,000 images).

Reported: the best validation accuracy of each (and that trial's test accuracy), and how far the
later half of each search's lr lies from the best lr it found (mean |log10| distance, in decades).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script from anywhere

import torch  # noqa: E402

from bench.cifar10 import extracted, find_archive  # noqa: E402
from ml.adaptive import Observation, suggest  # noqa: E402
from ml.config import DataConfig, SearchSpec, TrainConfig  # noqa: E402
from ml.data import load_dataset, make_splits  # noqa: E402
from ml.search import expand  # noqa: E402
from ml.train import run_trial  # noqa: E402

SPACE = {
    "lr": {"low": 1e-4, "high": 1.0, "log": True},
    "weight_decay": {"low": 1e-6, "high": 1e-2, "log": True},
}


def base_config(epochs: int) -> TrainConfig:
    return TrainConfig(arch="resnet18_imagenet", epochs=epochs, batch_size=128, ema_decay=0.0, tta=False)


def train(config: TrainConfig, splits: Any, folder: Path) -> dict[str, Any]:
    start = time.perf_counter()
    result = run_trial(config, splits, folder, device_ids=[], allow_download=False)
    return {
        "val_accuracy": result.best_val_accuracy,
        "test_accuracy": result.test_accuracy,
        "seconds": round(time.perf_counter() - start, 1),
    }


def later_half_distance(rows: list[dict[str, Any]]) -> float:
    best = max(rows, key=lambda r: r["val_accuracy"] or 0.0)
    later = rows[len(rows) // 2 :]
    return statistics.fmean(abs(math.log10(r["params"]["lr"] / best["params"]["lr"])) for r in later)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-limit", type=int, default=5000)
    parser.add_argument("--val-size", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    dataset = load_dataset("cifar10", extracted(find_archive(args.data)), download=False)
    splits = make_splits(dataset, DataConfig(val_size=args.val_size, train_limit=args.train_limit), seed=0)
    base = base_config(args.epochs)
    searches = {
        name: SearchSpec.model_validate(
            {"strategy": name, "space": SPACE, "trials": args.trials, "seed": args.seed}
        )
        for name in ("tpe", "random")
    }
    random_points = [p.params for p in expand(searches["random"], base)]
    rows: dict[str, list[dict[str, Any]]] = {"tpe": [], "random": []}
    with tempfile.TemporaryDirectory() as scratch:
        for i in range(args.trials):
            for name in ("tpe", "random"):
                if name == "tpe":
                    seen = [Observation(r["params"], "complete", r["val_accuracy"]) for r in rows["tpe"]]
                    params = suggest(searches["tpe"], seen)
                else:
                    params = random_points[i]
                config = TrainConfig.model_validate({**base.model_dump(), **params})
                row = {"trial": i, "params": params, **train(config, splits, Path(scratch) / f"{name}-{i}")}
                rows[name].append(row)
                print(json.dumps({"search": name, **row}), flush=True)
    summary = {
        name: {
            "best_val_accuracy": max(r["val_accuracy"] for r in found),
            "test_of_best": max(found, key=lambda r: r["val_accuracy"])["test_accuracy"],
            "best_params": max(found, key=lambda r: r["val_accuracy"])["params"],
            "later_half_lr_distance_decades": round(later_half_distance(found), 3),
            "later_half_mean_val": round(
                statistics.fmean(r["val_accuracy"] for r in found[len(found) // 2 :]), 4
            ),
        }
        for name, found in rows.items()
    }
    out = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()},
        "summary": summary,
        "trials": rows,
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
