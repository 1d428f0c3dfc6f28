"""Argument types the commands share."""

from __future__ import annotations

import argparse


def gpu_list(text: str) -> list[int]:
    """`0,1` -> [0, 1]; `''` -> [] (the CPU). Same meaning as `app.worker.loop.run_worker(gpus=...)`."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not all(part.isdigit() for part in parts):
        raise argparse.ArgumentTypeError(f"expected CUDA device ids like 0,1; got {text!r}")
    return [int(part) for part in parts]


def worker_count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a number of workers >= 0; got {text!r}")
    return int(text)
