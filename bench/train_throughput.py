"""Training throughput: the project's trainer against a loop in the original report's style.

    python bench/train_throughput.py [--windows 5] [--window-seconds 6] [--data PATH] [--json FILE]

Both train torchvision's ResNet-18 (ImageNet stem, fc -> 10 classes) on the same device and
the same CIFAR-10 (the shared JPEG archive, extracted once into a cache folder):

- reference: torchvision ImageFolder with RandomHorizontalFlip, RandomCrop(32, padding=4),
  ToTensor, Normalize(0.5, 0.5); DataLoader batch 32 (per GPU), shuffled, num_workers 2 on the
  CPU or 4 per GPU; SGD lr 0.01, momentum 0.9, weight decay 1e-6; per-batch .to(device) and
  loss.item(); nn.DataParallel over several GPUs.
- ours: `ml.engine.train_one_epoch` on batches from `ml.augment.train_batches`, as `run_trial`
  trains: uint8 splits resident on the device, batch augmentation there, channels_last,
  `precision: auto`. Twice: with the default recipe's settings (batch 512, EMA, cutout, label
  smoothing, Nesterov) and with the report's hyper-parameters (batch 32, no EMA), which isolates
  the engine from the batch size.

Each is timed in windows of --window-seconds after a warm-up, the three taking turns so that
load from other processes falls on all of them alike; medians are reported, and the ratio is of
medians. Then the CIFAR-stem ResNet-18 of the default recipe in fp32 and in bf16 (autocast),
likewise in turns, with the epoch time they imply for 45,000 training images.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script from anywhere

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, Subset  # noqa: E402

from bench.cifar10 import DEFAULT_CACHE, extracted, find_archive  # noqa: E402
from ml.config import REPORT_RECIPE, DataConfig, TrainConfig  # noqa: E402
from ml.data import Splits, load_dataset, make_splits  # noqa: E402
from ml.engine import train_one_epoch  # noqa: E402
from ml.environment import determinism, device_name, seed_everything, select_runtime  # noqa: E402
from ml.setup import TrialSetup, build_setup  # noqa: E402

CIFAR_TRAIN_IMAGES = 45_000  # the recipe's split: 50,000 minus 5,000 held out for validation


@dataclass
class Series:
    """Images per second of one trainer, window by window."""

    name: str
    batch: int
    rates: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.rates)


# --- the reference loop --------------------------------------------------------------------------


def reference_loader(train_dir: Path, batch: int, workers: int, limit: int | None) -> DataLoader[Any]:
    from torchvision import datasets, transforms  # imported late: slow to import

    transform = transforms.Compose(
        [
            transforms.RandomHorizontalFlip(),
            transforms.RandomCrop(32, padding=4),
            transforms.ToTensor(),
            transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        ]
    )
    data: Any = datasets.ImageFolder(str(train_dir), transform=transform)
    if limit is not None:
        data = Subset(data, range(0, len(data), max(1, len(data) // limit)))
    return DataLoader(data, batch_size=batch, shuffle=True, num_workers=workers)


def reference_model(device: torch.device, gpus: int) -> nn.Module:
    from torchvision.models import resnet18

    model = resnet18()
    model.fc = nn.Linear(model.fc.in_features, 10)
    model = model.to(device)
    return nn.DataParallel(model) if gpus > 1 else model


class ReferenceLoop:
    """The report's training loop, resumable window after window."""

    def __init__(self, loader: DataLoader[Any], device: torch.device, gpus: int) -> None:
        self.loader, self.device = loader, device
        self.model = reference_model(device, gpus).train()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-6)
        self.criterion = nn.CrossEntropyLoss()
        self.batches = self._epochs()

    def _epochs(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield from self.loader

    def window(self, seconds: float) -> float:
        start, images, running_loss = time.perf_counter(), 0, 0.0
        while images == 0 or time.perf_counter() - start < seconds:
            inputs, labels = next(self.batches)
            inputs, labels = inputs.to(self.device), labels.to(self.device)
            self.optimizer.zero_grad()
            loss = self.criterion(self.model(inputs), labels)
            loss.backward()
            self.optimizer.step()
            running_loss += loss.item()
            images += len(labels)
        return images / (time.perf_counter() - start)


# --- the project's trainer -----------------------------------------------------------------------


class EngineLoop:
    """`train_one_epoch` over the device-resident splits, window after window."""

    def __init__(self, cfg: TrainConfig, splits: Splits, device_ids: list[int] | None) -> None:
        runtime = select_runtime(cfg, device_ids)
        seed_everything(cfg.seed)
        self.setup: TrialSetup = build_setup(cfg, splits, runtime, allow_download=False)
        self.compile_seconds = self.setup.wrap()  # None unless cfg.compile
        self.batches = itertools.chain.from_iterable(self.setup.epoch_batches() for _ in itertools.count())

    def window(self, seconds: float) -> float:
        s = self.setup
        start = time.perf_counter()
        done = train_one_epoch(
            s.runner,
            s.optimizer,
            s.scheduler,
            _for(self.batches, seconds, start),
            criterion=s.criterion,
            epoch=1,
            runtime=s.runtime,
            ema_update=s.ema.update if s.ema else None,
        )  # ends with a device sync: the time below covers every queued step
        return done.images / (time.perf_counter() - start)


def _for(batches: Iterator[Any], seconds: float, start: float) -> Iterator[Any]:
    """Batches until `seconds` have passed since `start` (at least one)."""
    yield next(batches)
    while time.perf_counter() - start < seconds:
        yield next(batches)


# --- the run -------------------------------------------------------------------------------------


def take_turns(loops: dict[str, Callable[[float], float]], series: dict[str, Series], args: Any) -> None:
    for window in loops.values():  # warm-up: worker start-up, allocator, cudnn autotuning
        window(args.warmup_seconds)
    for round_index in range(args.windows):
        for name, window in loops.items():
            series[name].rates.append(window(args.window_seconds))
        rates = ", ".join(f"{name} {series[name].rates[-1]:.0f}" for name in loops)
        print(f"  window {round_index + 1}/{args.windows}: {rates} img/s", flush=True)


def load_splits(root: Path, limit: int | None) -> Splits:
    dataset = load_dataset("cifar10", root, download=False)
    val_size = min(5000, len(dataset.train_y) // 10)  # the recipe's split; smaller for tiny test data
    return make_splits(dataset, DataConfig(val_size=val_size, train_limit=limit), seed=0)


def compare_with_reference(root: Path, splits: Splits, device: torch.device, args: Any) -> dict[str, Any]:
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    workers = 4 * gpus if gpus else 2
    ids = None if gpus else []
    loader = reference_loader(root / "train", 32 * max(gpus, 1), workers, args.limit)
    ours = TrainConfig(arch="resnet18_imagenet")
    report_on_engine = TrainConfig(**{**REPORT_RECIPE, "batch_size": 32 * max(gpus, 1)})
    loops = {
        "reference": ReferenceLoop(loader, device, gpus).window,
        "ours": EngineLoop(ours, splits, ids).window,
        "ours_report_hparams": EngineLoop(report_on_engine, splits, ids).window,
    }
    batches = {"reference": loader.batch_size or 32, "ours": ours.batch_size}
    compile_seconds = None
    if args.compile:
        compiled = EngineLoop(ours.model_copy(update={"compile": True}), splits, ids)
        compile_seconds = compiled.compile_seconds
        loops["ours_compiled"], batches["ours_compiled"] = compiled.window, ours.batch_size
    series = {name: Series(name, batches.get(name, report_on_engine.batch_size)) for name in loops}
    print(f"reference ({workers} loader workers) vs ours, torchvision ResNet-18:", flush=True)
    take_turns(loops, series, args)
    medians = {name: s.median for name, s in series.items()}
    return {
        "series": [asdict(s) | {"median": s.median} for s in series.values()],
        "ratio": medians["ours"] / medians["reference"],
        "ratio_report_hparams": medians["ours_report_hparams"] / medians["reference"],
        "ratio_compiled": medians["ours_compiled"] / medians["reference"] if args.compile else None,
        "compile_seconds": compile_seconds,
    }


def cifar_stem(splits: Splits, device: torch.device, args: Any) -> dict[str, Any]:
    ids = None if device.type == "cuda" else []
    loops, series = {}, {}
    for precision in ("fp32", "bf16"):
        cfg = TrainConfig(precision=precision, batch_size=args.stem_batch)
        loops[precision] = EngineLoop(cfg, splits, ids).window
        series[precision] = Series(f"cifar_stem_{precision}", cfg.batch_size)
    print(f"CIFAR-stem ResNet-18, batch {args.stem_batch}, fp32 vs bf16:", flush=True)
    take_turns(loops, series, args)
    return {
        "series": [asdict(s) | {"median": s.median} for s in series.values()],
        "bf16_over_fp32": series["bf16"].median / series["fp32"].median,
        "epoch_seconds": {p: CIFAR_TRAIN_IMAGES / series[p].median for p in series},
    }


def pick_device(choice: str) -> torch.device:
    """--device auto|cuda|cpu as a device: auto is CUDA when there is one."""
    cuda = torch.cuda.is_available() if choice == "auto" else choice == "cuda"
    return torch.device("cuda" if cuda else "cpu")


def report(
    results: dict[str, Any], summary: Callable[[dict[str, Any]], None], json_path: Path | None
) -> None:
    """Note the load average now, print the summary, and write the results when asked."""
    results["machine"]["load_average_after"] = os.getloadavg()
    summary(results)
    if json_path:
        json_path.write_text(json.dumps(results, indent=2))


def machine(device: torch.device) -> dict[str, Any]:
    return {
        "device": device_name(device),
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "load_average": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="the CIFAR-10 JPEG .tar.gz")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="where it is extracted")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--window-seconds", type=float, default=6.0)
    parser.add_argument("--warmup-seconds", type=float, default=4.0)
    parser.add_argument("--stem-batch", type=int, default=None, help="default: 512 on CUDA, 32 on the CPU")
    parser.add_argument("--skip-stem", action="store_true", help="only the comparison with the reference")
    parser.add_argument("--compile", action="store_true", help="also ours with torch.compile")
    parser.add_argument("--limit", type=int, default=None, help="train on this many images (smoke tests)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    args.stem_batch = args.stem_batch or (512 if device.type == "cuda" else 32)
    root = extracted(find_archive(args.data), args.cache_dir)
    splits = load_splits(root, args.limit)
    results: dict[str, Any] = {"machine": machine(device), "args": {k: str(v) for k, v in vars(args).items()}}
    with determinism(False, device):  # cudnn autotuning on, as in a trial
        results["reference"] = compare_with_reference(root, splits, device, args)
        if not args.skip_stem:
            results["cifar_stem"] = cifar_stem(splits, device, args)
    report(results, print_summary, args.json)


def print_summary(results: dict[str, Any]) -> None:
    m = results["machine"]
    print(f"\n{m['date']}: {m['device']}, {m['cpus']} CPUs, {m['threads']} threads, torch {m['torch']}")
    print(f"load average before {m['load_average'][0]:.1f}, after {m['load_average_after'][0]:.1f}\n")
    print("| trainer | batch | median img/s | windows (img/s) |\n|---|---:|---:|---|")
    rows = results["reference"]["series"] + results.get("cifar_stem", {}).get("series", [])
    for s in rows:
        windows = ", ".join(f"{r:.0f}" for r in s["rates"])
        print(f"| {s['name']} | {s['batch']} | {s['median']:.1f} | {windows} |")
    ref = results["reference"]
    print(
        f"\nours / reference: {ref['ratio']:.2f}x (report hyper-parameters on our engine: "
        f"{ref['ratio_report_hparams']:.2f}x)"
    )
    if ref.get("ratio_compiled") is not None:
        seconds = ref["compile_seconds"]
        print(f"ours compiled / reference: {ref['ratio_compiled']:.2f}x (compiled in {seconds:.0f} s)")
    if "cifar_stem" in results:
        stem = results["cifar_stem"]
        epochs = ", ".join(f"{p} {s:.1f} s" for p, s in stem["epoch_seconds"].items())
        print(f"CIFAR stem: bf16 / fp32 = {stem['bf16_over_fp32']:.2f}x; an epoch of 45,000 images: {epochs}")


if __name__ == "__main__":
    main()
