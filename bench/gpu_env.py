"""What bench/gpu.sh runs on: Python, torch, CUDA, the GPUs, and whether every module the run
needs imports (a module missing on the GPU machine's image shows here, named, before any step
fails on it).

    python bench/gpu_env.py [--json FILE]

Exit status 1 if a module does not import.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script from anywhere

THIRD_PARTY = ("torch", "torchvision", "numpy", "PIL", "pydantic", "pydantic_core", "typing_extensions")
OURS = ("ml.train", "ml.distributed", "bench.gpu_checks", "bench.gpu_recipes", "bench.train_throughput")


def modules() -> list[dict[str, Any]]:
    rows = []
    for name in THIRD_PARTY + OURS:
        try:
            module = importlib.import_module(name)
            version = getattr(module, "__version__", None)
            rows.append(
                {"module": name, "ok": True, "version": version, "file": getattr(module, "__file__", None)}
            )
        except Exception as exc:
            traceback.print_exc()
            rows.append({"module": name, "ok": False, "error": f"{type(exc).__name__}: {exc}"})
    return rows


def gpus() -> dict[str, Any]:
    try:
        import torch
    except ImportError as exc:
        return {"error": str(exc)}
    info: dict[str, Any] = {
        "torch": str(torch.__version__),
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "devices": [],
    }
    if torch.cuda.is_available():
        info["cudnn"] = torch.backends.cudnn.version()
        info["bf16"] = torch.cuda.is_bf16_supported()
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            info["devices"].append(
                {"name": p.name, "capability": f"{p.major}.{p.minor}", "memory_mib": p.total_memory / 2**20}
            )
    return info


def nvidia_smi() -> str | None:
    query = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.sm", "--format=csv"]
    try:
        return subprocess.run(query, capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    env = {
        "python": platform.python_version(),
        "executable": sys.executable,
        "platform": platform.platform(),
        "nvidia_smi": nvidia_smi(),
        "modules": modules(),
        "gpus": gpus(),
    }
    print(f"Python {env['python']} ({env['executable']}), {env['platform']}")
    print(env["nvidia_smi"] or "nvidia-smi: not available")
    for row in env["modules"]:
        state = (
            f"{row.get('version') or ''} {row.get('file') or ''}" if row["ok"] else f"FAILED {row['error']}"
        )
        print(f"  {row['module']}: {state}")
    print(f"torch: {json.dumps(env['gpus'])}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(env, indent=2))
    sys.exit(0 if all(row["ok"] for row in env["modules"]) else 1)


if __name__ == "__main__":
    main()
