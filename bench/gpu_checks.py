"""Smoke checks of the engine's device paths, run by bench/gpu.sh before its benchmarks.

    python bench/gpu_checks.py [--device cpu|cuda] [--json FILE] [--check-seconds 120]

On CUDA: batch augmentation on the device (seeded, with the right distributions, and the recipe
options: reflected translate, alternating flip), bf16 autocast picked by `precision: auto`,
channels_last weights and batches, and one-epoch trials with DataParallel (when there are several
GPUs) and with DDP over every GPU (NCCL). On the CPU the same checks run where they apply (fp32,
DDP with two gloo ranks), so the script itself is tested without a GPU. Random uint8 data: these
check the machinery, not learning. Each check gets --check-seconds (0: no limit), so a hung
collective fails its check instead of the run; the JSON is rewritten after every check, so what
finished is kept even if the whole script is killed. Exit status 1 if any check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script from anywhere

import torch  # noqa: E402

from ml.augment import augment_batch, random_crop, random_flip, train_batches  # noqa: E402
from ml.checkpoint import load_checkpoint  # noqa: E402
from ml.config import AugmentConfig, TrainConfig  # noqa: E402
from ml.data import MEAN, STD, Splits  # noqa: E402
from ml.engine import train_one_epoch  # noqa: E402
from ml.environment import precision_for, select_runtime  # noqa: E402
from ml.setup import build_setup  # noqa: E402
from ml.train import run_trial  # noqa: E402

SMOKE = TrainConfig(arch="resnet18_imagenet", epochs=1, batch_size=64, lr=0.05, ema_decay=0.9)


class Skipped(Exception):
    """The check does not apply to this machine (e.g. DataParallel with one GPU)."""


def random_splits(n_train: int = 256, n_eval: int = 64) -> Splits:
    generator = torch.Generator().manual_seed(0)

    def images(n: int) -> torch.Tensor:  # NHWC memory viewed as NCHW: channels-last, as ml.data's
        return torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8, generator=generator).permute(
            0, 3, 1, 2
        )

    def labels(n: int) -> torch.Tensor:
        return torch.arange(n) % 10

    return Splits(
        *(images(n_train), labels(n_train), images(n_eval), labels(n_eval), images(n_eval), labels(n_eval)),
        classes=[str(c) for c in range(10)],
    )


def check_augmentation(device: torch.device, epoch_images: int) -> str:
    n = 8192
    ones = torch.ones((n, 3, 32, 32), dtype=torch.uint8, device=device)
    crops = random_crop(ones, 4, torch.Generator(device=device).manual_seed(0))
    top = (crops[:, 0, :4, 16] == 0).sum(dim=1)  # padding rows above the image: 4 - offset, or 0
    shares = torch.bincount(top.cpu(), minlength=5).float() / n
    expected = torch.tensor([5 / 9, 1 / 9, 1 / 9, 1 / 9, 1 / 9])  # offsets 0..8 uniform
    assert torch.allclose(shares, expected, atol=0.02), f"crop offsets {shares.tolist()}"
    ramp = torch.arange(32, dtype=torch.uint8, device=device).expand(n, 3, 32, 32)
    flipped = random_flip(ramp, torch.Generator(device=device).manual_seed(0))[:, 0, 0, 0] == 31
    assert abs(flipped.float().mean().item() - 0.5) < 0.03, "flip probability"
    cfg = AugmentConfig(cutout=8)
    x = torch.randint(0, 256, (epoch_images, 3, 32, 32), dtype=torch.uint8, device=device)
    start = time.perf_counter()
    out = augment_batch(x, cfg, MEAN, STD, torch.Generator(device=device).manual_seed(1))
    _sync(device)
    seconds = time.perf_counter() - start
    again = augment_batch(x, cfg, MEAN, STD, torch.Generator(device=device).manual_seed(1))
    assert out.device == x.device and out.dtype == torch.float32 and torch.equal(out, again), "seeded"
    options = AugmentConfig(cutout=12, crop_fill="reflect", flip_mode="alternate")
    labels = torch.arange(len(x), device=device)
    generator = torch.Generator(device=device).manual_seed(2)
    epochs = [list(train_batches(x, labels, 512, options, MEAN, STD, generator, epoch=e)) for e in (1, 2)]
    assert all(b[0].device == x.device for batches in epochs for b in batches), "recipe options on the device"
    return f"crop/flip/cutout of {epoch_images} images on {device.type}: {1000 * seconds:.0f} ms"


def check_training_step(device: torch.device) -> str:
    runtime = select_runtime(SMOKE, [0] if device.type == "cuda" else [])
    expected = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else runtime.precision
    assert runtime.precision == expected == precision_for(SMOKE, device)[0], runtime.precision
    setup = build_setup(SMOKE, random_splits(), runtime, allow_download=False)
    assert setup.train_x.device.type == device.type, "splits live on the device"
    assert setup.net.conv1.weight.is_contiguous(memory_format=torch.channels_last), "channels_last weights"
    batches = list(
        train_batches(setup.train_x, setup.train_y, 64, SMOKE.augment, MEAN, STD, setup.generator, True)
    )
    assert batches[0][0].is_contiguous(memory_format=torch.channels_last), "channels_last batches"
    with runtime.autocast():
        dtype = setup.net(batches[0][0]).dtype
    assert dtype == (torch.bfloat16 if runtime.precision == "bf16" else torch.float32), dtype
    done = train_one_epoch(
        setup.net,
        setup.optimizer,
        setup.scheduler,
        batches,
        criterion=setup.criterion,
        epoch=1,
        runtime=runtime,
    )
    assert done.images == 256 and math.isfinite(done.loss), "a finite loss"
    return f"precision {runtime.precision}, logits {dtype}, channels_last, loss {done.loss:.3f}"


def check_trial(parallel: str, device: torch.device) -> str:
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    if parallel == "dataparallel" and gpus < 2:
        raise Skipped(f"DataParallel needs 2 GPUs; {gpus} here")
    cfg = SMOKE.model_copy(update={"parallel": parallel})
    with tempfile.TemporaryDirectory() as out_dir:
        result = run_trial(cfg, random_splits(), Path(out_dir), device_ids=None if gpus else [])
        processes = load_checkpoint(Path(out_dir) / "best.pt")["metadata"].get("world_size", 1)
    env = result.environment
    assert env["parallel"] == parallel and result.test_accuracy is not None, env
    return f"{env['parallel']} on {env['device']}, devices {env['device_ids']}, {processes} process(es)"


class CheckTimedOut(Exception):
    """The check ran past --check-seconds."""


def run_checks(
    device: torch.device, epoch_images: int, seconds: int = 0, json_path: Path | None = None
) -> list[dict[str, Any]]:
    checks: dict[str, Callable[[], str]] = {
        "augmentation on the device": lambda: check_augmentation(device, epoch_images),
        "bf16 + channels_last training step": lambda: check_training_step(device),
        "DataParallel trial": lambda: check_trial("dataparallel", device),
        "DDP trial": lambda: check_trial("ddp", device),
    }
    rows: list[dict[str, Any]] = []
    for name, check in checks.items():
        start = time.perf_counter()
        try:
            with _time_limit(seconds):
                status, detail = "ok", check()
        except Skipped as exc:
            status, detail = "skipped", str(exc)
        except Exception as exc:
            status, detail = "FAILED", f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        rows.append(
            {"check": name, "status": status, "detail": detail, "seconds": time.perf_counter() - start}
        )
        print(f"  {status:8} {name}: {detail} ({rows[-1]['seconds']:.1f} s)", flush=True)
        _write(json_path, device, rows)
    return rows


@contextlib.contextmanager
def _time_limit(seconds: int) -> Iterator[None]:
    """Raise CheckTimedOut in the block after `seconds` (0: never). A DDP trial's supervisor then
    kills its ranks on the way out, however they hang."""
    if seconds <= 0:
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise CheckTimedOut(f"no result within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _write(json_path: Path | None, device: torch.device, rows: list[dict[str, Any]]) -> None:
    if json_path is not None:
        checks = {"device": device.type, "gpus": gpu_names(device), "checks": rows}
        json_path.write_text(json.dumps(checks, indent=2))


def gpu_names(device: torch.device) -> list[str]:
    return (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if device.type == "cuda"
        else []
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--epoch-images", type=int, default=45_000, help="images augmented for the timing")
    parser.add_argument("--check-seconds", type=int, default=0, help="limit per check; 0: none")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available() if args.device == "auto" else args.device == "cuda"
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    names = gpu_names(device)
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, devices: {names or 'CPU only'}", flush=True)
    rows = run_checks(device, args.epoch_images, args.check_seconds, args.json)
    sys.exit(1 if any(r["status"] == "FAILED" for r in rows) else 0)


if __name__ == "__main__":
    main()
