"""Claim throughput and correctness: N worker processes drain M no-op trials through the real queue.

Each process loops claim_trial -> finish_trial (a no-op "pruned" ending, no training) until the
queue is empty, and reports the trial ids it claimed. Reported per database: trials claimed per
second (wall clock, first claim to last finish), duplicates (a trial claimed twice; must be 0)
and lost trials (a trial never finished; must be 0).

    python bench/claim_throughput.py                     # SQLite (temp file) and PostgreSQL
    python bench/claim_throughput.py --workers 8 --trials 2000 --databases sqlite
    SWEEPSERVE_BENCH_POSTGRES_URL=postgresql+psycopg://postgres@127.0.0.1:5432/postgres  (admin URL)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import func, select

from app.store.claims import Outcome, claim_trial, finish_trial
from app.store.db import make_engine, session_factory, transaction, upgrade_to_head
from app.store.jobs import submit_job
from app.store.tables import Trial
from ml.config import MAX_TRIALS
from ml.job import JobSpec
from tests.postgres import throwaway_database

POSTGRES_ADMIN_URL = os.environ.get(
    "SWEEPSERVE_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
NO_OP = Outcome("pruned", [], None, None, None)


@dataclass
class Result:
    database: str
    workers: int
    trials: int
    seconds: float
    claims_per_second: float
    claims: int
    duplicates: int
    lost: int
    busiest_worker_share: float  # fraction of the claims made by the busiest worker


def drain(url: str, worker_id: str, start: Any, out: Any) -> None:
    """One worker process: claim and finish until the queue is empty; send back (ids, t0, t1)."""
    engine = make_engine(url)
    factory = session_factory(engine)
    claimed: list[int] = []
    start.wait()
    began = time.time()
    while True:
        with transaction(factory) as session:
            claim = claim_trial(session, worker_id, 60.0)
        if claim is None:
            break
        claimed.append(claim.trial_id)
        with transaction(factory) as session:
            finish_trial(session, claim, NO_OP)
    out.put((worker_id, claimed, began, time.time()))
    engine.dispose()


def submit_trials(url: str, trials: int) -> None:
    """Jobs of at most MAX_TRIALS trials each (the API's cap), `trials` in all."""
    engine = make_engine(url)
    factory = session_factory(engine)
    left, job = trials, 0
    while left:
        n = min(left, MAX_TRIALS)
        spec = JobSpec.model_validate({"name": f"noop-{job}", "search": {"space": {"seed": list(range(n))}}})
        with transaction(factory) as session:
            submit_job(session, spec)
        left, job = left - n, job + 1
    engine.dispose()


def run(url: str, database: str, workers: int, trials: int) -> Result:
    upgrade_to_head(url)
    submit_trials(url, trials)
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=drain, args=(url, f"bench-{i}", start, out)) for i in range(workers)]
    for proc in procs:
        proc.start()
    time.sleep(3.0)  # let every process import and connect before the race starts
    start.set()
    reports = [out.get(timeout=600) for _ in procs]
    for proc in procs:
        proc.join()
    claimed = [trial_id for _, ids, _, _ in reports for trial_id in ids]
    seconds = max(r[3] for r in reports) - min(r[2] for r in reports)
    counts = Counter(claimed)
    engine = make_engine(url)
    with engine.connect() as conn:
        finished = conn.scalar(select(func.count()).select_from(Trial).where(Trial.status == "pruned")) or 0
    engine.dispose()
    return Result(
        database=database,
        workers=workers,
        trials=trials,
        seconds=round(seconds, 2),
        claims_per_second=round(len(claimed) / seconds, 1),
        claims=len(claimed),
        duplicates=sum(n - 1 for n in counts.values() if n > 1),
        lost=trials - finished,
        busiest_worker_share=round(max(len(ids) for _, ids, _, _ in reports) / max(1, len(claimed)), 3),
    )


@contextmanager
def sqlite_url() -> Iterator[str]:
    with tempfile.TemporaryDirectory() as folder:
        yield f"sqlite:///{Path(folder) / 'bench.db'}"


def postgres_url() -> AbstractContextManager[str]:
    """A throwaway database on the server, dropped afterwards."""
    return throwaway_database(POSTGRES_ADMIN_URL, "sweepserve_bench")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--databases", default="sqlite,postgresql")
    args = parser.parse_args()
    places = {"sqlite": sqlite_url, "postgresql": postgres_url}
    results = []
    for database in args.databases.split(","):
        with places[database]() as url:
            result = run(url, database, args.workers, args.trials)
        print(json.dumps(asdict(result)), flush=True)
        results.append(result)
    if any(r.duplicates or r.lost for r in results):
        sys.exit("duplicates or lost trials: the claim is broken")


if __name__ == "__main__":
    main()
