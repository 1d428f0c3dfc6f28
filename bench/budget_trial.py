"""One trial exactly as a worker trains it, from a job spec's `train` and `data`, on the shared
CIFAR-10 copy: wall time (from run_trial's call to its return, the time budget's span), test
accuracy, the plan of a time budget, and the load average before and after.

    python bench/budget_trial.py '{"train": {"preset": "cpu", "time_budget_s": 600}}' [--threads 1]
        [--json FILE] [--data PATH]

The issue-12 checks (docs/benchmarks.md, "Training that fits the budget"):
    '{"train": {"arch": "resnet18_imagenet", "epochs": 1}, "data": {"train_limit": 10000}}'
    '{"train": {"preset": "cpu", "time_budget_s": 600}}'
    '{"train": {"preset": "cpu", "time_budget_s": 120}}'
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script from anywhere

import torch  # noqa: E402

from bench.cifar10 import extracted, find_archive  # noqa: E402
from bench.train_throughput import machine  # noqa: E402
from ml.data import load_dataset, make_splits  # noqa: E402
from ml.job import JobSpec  # noqa: E402
from ml.train import run_trial  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", help="a job spec (JSON) with train and data; search is ignored")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--data", type=Path, default=None, help="the CIFAR-10 JPEG .tar.gz")
    parser.add_argument("--json", type=Path, default=None, help="also append the result here (JSON lines)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = JobSpec.model_validate(json.loads(args.spec))
    dataset = load_dataset("cifar10", extracted(find_archive(args.data)), download=False)
    splits = make_splits(dataset, spec.data)
    before = os.getloadavg()
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as out_dir:
        result = run_trial(spec.train, splits, Path(out_dir), device_ids=[], allow_download=False)
    wall = time.monotonic() - start
    row = {
        "spec": json.loads(args.spec),
        "machine": machine(torch.device("cpu")),
        "threads": torch.get_num_threads(),
        "load_average_before": before,
        "load_average_after": os.getloadavg(),
        "wall_seconds": wall,
        "test_accuracy": result.test_accuracy,
        "best_val_accuracy": result.best_val_accuracy,
        "epochs_run": len(result.history),
        "plan": result.environment.get("plan"),
        "precision": result.environment.get("precision"),
        "precision_probe": result.environment.get("precision_probe"),
        "history": [m.as_dict() for m in result.history],
        "val_fingerprint": splits.val_fingerprint,
    }
    print(json.dumps({k: v for k, v in row.items() if k not in ("history", "machine")}), flush=True)
    if args.json:
        with args.json.open("a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
