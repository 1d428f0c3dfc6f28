"""ASHA against the full grid: the original report's 9-point lr x wd grid, trained twice through the
real queue and worker processes on CIFAR-10, once in full and once with ASHA early stopping.

Compares the total epochs trained and the best validation accuracy found (with that trial's test
accuracy). Both runs use the report's recipe (REPORT_RECIPE: torchvision ResNet-18, SGD, batch 32,
constant lr) on a stratified `--train-limit` subset, so that a CPU finishes in minutes.

    python bench/asha_vs_grid.py --epochs 27 --eta 3 --train-limit 400 --val-size 500
    python bench/asha_vs_grid.py --data /path/cifar10-jpeg.tar.gz --workers 1 --json out.json

The data set (a .tar.gz of train/<class>/*.jpg and test/<class>/*.jpg, or any form ml.data reads)
is linked into --data-dir, where the decoded arrays are cached for later runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sqlalchemy import select  # noqa: E402

from app.store.db import make_engine, session_factory, transaction, upgrade_to_head  # noqa: E402
from app.store.jobs import submit_job  # noqa: E402
from app.store.tables import Job, Trial  # noqa: E402
from ml.config import REPORT_RECIPE  # noqa: E402
from ml.job import JobSpec  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"
BENCH_DATA_DIR = Path(tempfile.gettempdir()) / "sweepserve-bench-data"
GRID = {"lr": [0.001, 0.01, 0.1], "weight_decay": [1e-4, 1e-5, 1e-6]}


@dataclass
class RunResult:
    mode: str
    seconds: float
    epochs_trained: int
    statuses: dict[str, int]
    best_params: dict[str, Any]
    best_val_accuracy: float
    best_test_accuracy: float | None
    trials: list[dict[str, Any]]


def job_spec(args: argparse.Namespace, asha: bool) -> JobSpec:
    early = {"strategy": "asha", "min_epochs": args.min_epochs, "reduction_factor": args.eta}
    return JobSpec.model_validate(
        {
            "name": "asha" if asha else "grid",
            "search": {"strategy": "grid", "space": GRID},
            # deterministic: a configuration trains to the same curve in both sweeps, so the best
            # results differ only by what ASHA stopped, not by run-to-run noise.
            "train": {**REPORT_RECIPE, "epochs": args.epochs, "seed": args.seed, "deterministic": True},
            "data": {"val_size": args.val_size, "train_limit": args.train_limit},
            "early_stopping": early if asha else {"strategy": "none"},
        }
    )


def link_data(data: Path, data_dir: Path) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    link = data_dir / data.name
    if not link.exists():
        link.symlink_to(data.resolve())


def start_workers(
    args: argparse.Namespace, url: str, artifacts: Path, log: Path
) -> list[subprocess.Popen[bytes]]:
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // args.workers))
    env = os.environ | {
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": threads,
        "SWEEPSERVE_DATABASE_URL": url,
        "SWEEPSERVE_ARTIFACTS_DIR": str(artifacts),
        "SWEEPSERVE_DATA_DIR": str(args.data_dir),
        "SWEEPSERVE_ALLOW_DOWNLOAD": "false",
        "SWEEPSERVE_POLL_SECONDS": "0.2",
    }
    gpus = ["--gpus", args.gpus] if args.gpus is not None else []
    with log.open("ab") as out:
        return [
            subprocess.Popen(
                [sys.executable, "-m", "app.cli", "worker", *gpus], cwd=REPO, env=env, stdout=out, stderr=out
            )
            for _ in range(args.workers)
        ]


def run_sweep(args: argparse.Namespace, asha: bool, workdir: Path) -> RunResult:
    mode = "asha" if asha else "grid"
    url = f"sqlite:///{workdir / f'{mode}.db'}"
    upgrade_to_head(url)
    engine = make_engine(url)
    factory = session_factory(engine)
    with transaction(factory) as session:
        job, _ = submit_job(session, job_spec(args, asha))
        job_id = job.id
    started = time.monotonic()
    workers = start_workers(args, url, workdir / f"{mode}-artifacts", workdir / f"{mode}.log")
    try:
        while not _finished(factory, job_id):
            if all(w.poll() is not None for w in workers):
                sys.exit(f"every worker exited; see {workdir / f'{mode}.log'}")
            time.sleep(1.0)
    finally:
        for worker in workers:  # only the processes started here, by pid
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        for worker in workers:
            worker.wait()
    seconds = time.monotonic() - started
    with factory() as session:
        trials = list(session.scalars(select(Trial).where(Trial.job_id == job_id).order_by(Trial.index)))
    engine.dispose()
    return summarise(mode, seconds, trials)


def _finished(factory: Any, job_id: int) -> bool:
    with factory() as session:
        return session.scalar(select(Job.finished_at).where(Job.id == job_id)) is not None


def summarise(mode: str, seconds: float, trials: list[Trial]) -> RunResult:
    scored = [t for t in trials if t.val_accuracy is not None]
    best = max(scored, key=lambda t: (t.val_accuracy, -t.index))
    statuses: dict[str, int] = {}
    for t in trials:
        statuses[t.status] = statuses.get(t.status, 0) + 1
    rows = [
        {
            "params": t.params,
            "status": t.status,
            "epochs": t.epoch,
            "val_accuracy": t.val_accuracy,
            "best_epoch": t.best_epoch,
            "test_accuracy": t.test_accuracy,
            "error": t.error,
        }
        for t in trials
    ]
    return RunResult(
        mode,
        round(seconds, 1),
        sum(t.epoch for t in trials),
        statuses,
        best.params,
        best.val_accuracy or 0.0,
        best.test_accuracy,
        rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="CIFAR-10 archive or folder")
    parser.add_argument(
        "--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "sweepserve-bench-data"
    )
    parser.add_argument("--epochs", type=int, default=27)
    parser.add_argument("--eta", type=int, default=3)
    parser.add_argument("--min-epochs", type=int, default=1)
    parser.add_argument("--train-limit", type=int, default=400)
    parser.add_argument("--val-size", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--gpus", default=None, help="passed to each worker's --gpus ('' = CPU)")
    parser.add_argument("--only", choices=["grid", "asha"], default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the databases, logs and checkpoints")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))  # so the workers are stopped too
    if args.data.exists():
        link_data(args.data, args.data_dir)
    workdir = Path(tempfile.mkdtemp(prefix="asha-vs-grid-"))
    results = []
    try:
        for asha in (False, True):
            if args.only in (None, "asha" if asha else "grid"):
                result = run_sweep(args, asha, workdir)
                print(json.dumps({k: v for k, v in asdict(result).items() if k != "trials"}), flush=True)
                results.append(result)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    report = {"args": {k: str(v) for k, v in vars(args).items()}, "results": [asdict(r) for r in results]}
    if len(results) == 2:
        grid, asha = results
        report["epochs_ratio"] = round(grid.epochs_trained / asha.epochs_trained, 2)
        report["best_val_gap_points"] = round(100 * (grid.best_val_accuracy - asha.best_val_accuracy), 2)
        print(json.dumps({k: report[k] for k in ("epochs_ratio", "best_val_gap_points")}))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
