"""One epoch of the default recipe at several peak learning rates: what a schedule built for
thousands of steps does when a small budget compresses it into a few dozen.

    python bench/short_schedule.py [--arch resnet18_imagenet] [--lrs 0.4,0.1] [--precision bf16]
        [--train-limit 33762]

Each run is `ml.train.run_trial` with `TrainConfig(arch=..., lr=..., precision=..., epochs=1)`
(everything else the default recipe) on a stratified subset of the shared CIFAR-10 copy, with
2,000 validation images held out and the 10,000 test images. Prints the epoch's mean training
loss (chance is ln 10 = 2.30 before label smoothing), validation and test accuracy.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cifar10 import DEFAULT_CACHE, extracted, find_archive
from ml.config import DataConfig, TrainConfig
from ml.data import load_dataset, make_splits
from ml.train import run_trial


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18_imagenet")
    parser.add_argument("--lrs", default="0.4,0.1", help="comma-separated peak learning rates")
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    parser.add_argument("--train-limit", type=int, default=33_762, help="33,762: what 10 CPU minutes held")
    parser.add_argument("--data", type=Path, default=None, help="CIFAR-10 archive (default: ../shared)")
    args = parser.parse_args()
    dataset = load_dataset("cifar10", extracted(find_archive(args.data), DEFAULT_CACHE), download=False)
    splits = make_splits(dataset, DataConfig(val_size=2000, train_limit=args.train_limit), seed=0)
    for lr in (float(x) for x in args.lrs.split(",")):
        cfg = TrainConfig(arch=args.arch, lr=lr, precision=args.precision, epochs=1)
        started = time.monotonic()
        with tempfile.TemporaryDirectory() as out:
            result = run_trial(cfg, splits, Path(out), device_ids=[], allow_download=False)
        epoch = result.history[-1]
        print(
            f"{args.arch} lr {lr} {args.precision}: train loss {epoch.train_loss:.3f}, "
            f"val {epoch.val_accuracy:.3f}, test {result.test_accuracy:.3f} "
            f"({time.monotonic() - started:.0f} s, {epoch.images_per_second:.0f} img/s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
