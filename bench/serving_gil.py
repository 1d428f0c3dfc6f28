"""Why /predict runs a traced graph: an eager forward beside a busy Python thread, against the
traced and frozen one (`app.serving.inference.serving_graph`), one intra-op thread, median of 20 calls.

    python bench/serving_gil.py [--batch 12] [--arch resnet18_imagenet] [--precision auto]

The busy thread stands in for the server's event loop (HTTP parsing, multipart, JSON). Prints one
line per variant: milliseconds per forward alone and beside the busy thread.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.serving.inference import serving_graph
from ml.config import TrainConfig
from ml.environment import precision_for
from ml.evaluate import predict_logits
from ml.models import build_model

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


def median_ms(forward: Callable[[], object], calls: int = 20) -> float:
    for _ in range(3):
        forward()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        forward()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def beside_busy_thread(forward: Callable[[], object]) -> float:
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            sum(i * i for i in range(1000))

    thread = threading.Thread(target=spin)
    thread.start()
    try:
        return median_ms(forward)
    finally:
        stop.set()
        thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=12)
    parser.add_argument("--arch", default="resnet18_imagenet")
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    device = torch.device("cpu")
    serving = TrainConfig(arch=args.arch, precision=args.precision)
    precision, _ = precision_for(serving, device, training=False)
    eager = build_model(serving).eval().to(memory_format=torch.channels_last)
    traced = serving_graph(eager, MEAN, STD, precision, device)
    images = torch.randint(0, 256, (args.batch, 3, 32, 32), dtype=torch.uint8)
    print(f"{args.arch}, batch {args.batch}, {precision}, 1 intra-op thread, torch {torch.__version__}")
    for name, module in (("eager", eager), ("traced", traced)):

        def forward(module: torch.nn.Module = module) -> object:
            with torch.inference_mode(), torch.jit.optimized_execution(False):
                return predict_logits(module, images, MEAN, STD, False, True, precision)

        alone, busy = median_ms(forward), beside_busy_thread(forward)
        print(f"{name}: alone {alone:.1f} ms, beside a busy thread {busy:.1f} ms")


if __name__ == "__main__":
    main()
