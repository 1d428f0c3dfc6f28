"""Adaptive jobs in the queue: points are created as workers claim, never beyond the job's
target, never twice; the job ends once every point ran. SQLite and PostgreSQL."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.store.adaptive import job_observations
from app.store.claims import Claim, Outcome, claim_trial, finish_trial, pause_trial
from app.store.db import make_engine, session_factory, transaction
from app.store.jobs import cancel_job, submit_job
from app.store.tables import Job, Trial
from ml.job import JobSpec
from ml.status import JobStatus, TrialStatus

SPACE = {
    "lr": {"low": 1e-3, "high": 1.0, "log": True},
    "weight_decay": {"low": 1e-6, "high": 1e-2, "log": True},
}


def submit_adaptive(
    factory: sessionmaker[Session], trials: int = 4, repeats: int = 1, priority: int = 0
) -> int:
    spec = JobSpec.model_validate(
        {
            "search": {"strategy": "tpe", "space": SPACE, "trials": trials, "repeats": repeats},
            "train": {"epochs": 2},
            "priority": priority,
        }
    )
    with transaction(factory) as session:
        job, _ = submit_job(session, spec)
        return job.id


def claim(factory: sessionmaker[Session], worker: str = "w1") -> Claim | None:
    with transaction(factory) as session:
        return claim_trial(session, worker, 30.0)


def epoch(n: int, accuracy: float) -> dict[str, Any]:
    return {"epoch": n, "train_loss": 1.0, "train_accuracy": 0.5, "val_loss": 1.0, "val_accuracy": accuracy,
            "lr": 0.1, "seconds": 1.0, "images_per_second": 10.0}  # fmt: skip


def succeed(factory: sessionmaker[Session], claim: Claim, accuracy: float) -> None:
    history = [epoch(1, accuracy / 2), epoch(2, accuracy)]
    with transaction(factory) as session:
        finish_trial(session, claim, Outcome("succeeded", history, accuracy, None, f"m{claim.trial_id}.pt"))


def trials_of(factory: sessionmaker[Session], job_id: int) -> list[Trial]:
    with factory() as session:
        return list(session.scalars(select(Trial).where(Trial.job_id == job_id).order_by(Trial.index)))


def test_a_point_is_created_per_claim_up_to_the_target(factory: sessionmaker[Session]) -> None:
    job_id = submit_adaptive(factory, trials=3)
    assert trials_of(factory, job_id) == []
    for n in range(3):
        got = claim(factory)
        assert got is not None and got.index == n
        assert len(trials_of(factory, job_id)) == n + 1
        succeed(factory, got, 0.5 + n / 10)
    assert claim(factory) is None
    trials = trials_of(factory, job_id)
    assert [t.point for t in trials] == [0, 1, 2]
    assert len({t.params["lr"] for t in trials}) == 3
    with factory() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.status is JobStatus.SUCCEEDED and job.finished_at is not None


def test_the_job_keeps_running_between_points(factory: sessionmaker[Session]) -> None:
    job_id = submit_adaptive(factory, trials=2)
    first = claim(factory)
    assert first is not None
    succeed(factory, first, 0.6)  # every trial so far finished, but one point is still to come
    with factory() as session:
        assert session.get(Job, job_id).status is JobStatus.RUNNING  # type: ignore[union-attr]


def test_repeats_are_queued_together_and_taken_before_a_new_point(factory: sessionmaker[Session]) -> None:
    job_id = submit_adaptive(factory, trials=2, repeats=3)
    claims = [claim(factory, f"w{i}") for i in range(3)]
    trials = trials_of(factory, job_id)
    assert [(t.index, t.point) for t in trials] == [(0, 0), (1, 0), (2, 0)]
    assert [t.config["seed"] for t in trials] == [0, 1, 2]
    assert len({t.params["lr"] for t in trials}) == 1
    assert [c.index for c in claims if c] == [0, 1, 2]
    fourth = claim(factory, "w4")  # the point's repeats are all taken: the next point is asked
    assert fourth is not None and fourth.index == 3 and len(trials_of(factory, job_id)) == 6


def test_an_adaptive_job_waits_its_turn_by_priority(factory: sessionmaker[Session]) -> None:
    low = submit_adaptive(factory, trials=2, priority=-1)
    spec = JobSpec.model_validate({"search": {"space": {"seed": [0]}}, "train": {"epochs": 1}})
    with transaction(factory) as session:
        grid, _ = submit_job(session, spec)
        grid_id = grid.id
    first = claim(factory)
    assert first is not None and first.job_id == grid_id
    assert trials_of(factory, low) == []  # nothing asked while another job came first
    second = claim(factory)
    assert second is not None and second.job_id == low


def test_observations_average_repeats_and_tell_pruned_points(factory: sessionmaker[Session]) -> None:
    job_id = submit_adaptive(factory, trials=2, repeats=2)
    a, b = claim(factory, "a"), claim(factory, "b")
    assert a is not None and b is not None
    succeed(factory, a, 0.6)
    (observation,) = job_observations_of(factory, job_id)
    assert observation.state == "running"  # one repeat still running
    succeed(factory, b, 0.8)
    c = claim(factory, "c")
    assert c is not None
    with transaction(factory) as session:
        finish_trial(session, c, Outcome("pruned", [epoch(1, 0.1)], 0.1, None, None))
    done, second = job_observations_of(factory, job_id)
    assert (done.state, round(done.value or 0, 6)) == ("complete", 0.7)
    assert second.state == "running"  # its other repeat is queued


def job_observations_of(factory: sessionmaker[Session], job_id: int) -> list[Any]:
    with factory() as session:
        return job_observations(session, job_id)


def test_a_cancelled_adaptive_job_asks_no_more_and_finishes(factory: sessionmaker[Session]) -> None:
    job_id = submit_adaptive(factory, trials=5)
    got = claim(factory)
    assert got is not None
    with transaction(factory) as session:
        cancel_job(session, job_id)
    with transaction(factory) as session:
        pause_trial(session, got, [epoch(1, 0.3)])  # the running trial stops: cancelled
    assert claim(factory) is None
    with factory() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.status is JobStatus.CANCELLED and job.finished_at is not None
    assert [t.status for t in trials_of(factory, job_id)] == [TrialStatus.CANCELLED]


def test_a_cancelled_job_with_no_trials_yet_is_finished_at_once(factory: sessionmaker[Session]) -> None:
    job_id = submit_adaptive(factory, trials=5)
    with transaction(factory) as session:
        cancel_job(session, job_id)
    with factory() as session:
        assert session.get(Job, job_id).finished_at is not None  # type: ignore[union-attr]


RACE_WORKERS, RACE_TRIALS = 3, 12


def _work(url: str, worker_id: str, start: Any, out: Path) -> None:
    """Claim and succeed (lr is the score) until no trial is left; write the trial ids."""
    engine = make_engine(url)
    factory = session_factory(engine)
    done: list[int] = []
    start.wait()
    while (got := claim(factory, worker_id)) is not None:
        done.append(got.trial_id)
        succeed(factory, got, min(1.0, float(got.config["lr"])))
    out.write_text(",".join(map(str, done)))
    engine.dispose()


@pytest.mark.slow
def test_three_processes_never_duplicate_or_exceed_the_target(
    db_url: str, factory: sessionmaker[Session], tmp_path: Path
) -> None:
    job_id = submit_adaptive(factory, trials=RACE_TRIALS)
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    outs = [tmp_path / f"w{i}.txt" for i in range(RACE_WORKERS)]
    procs = [ctx.Process(target=_work, args=(db_url, f"w{i}", start, o)) for i, o in enumerate(outs)]
    for proc in procs:
        proc.start()
    start.set()
    for proc in procs:
        proc.join(timeout=180)
    assert [proc.exitcode for proc in procs] == [0] * RACE_WORKERS
    claimed = [int(x) for o in outs for x in o.read_text().split(",") if x]
    trials = trials_of(factory, job_id)
    assert len(trials) == RACE_TRIALS == len(claimed) == len(set(claimed))
    assert sorted(t.index for t in trials) == list(range(RACE_TRIALS))
    assert len({(t.params["lr"], t.params["weight_decay"]) for t in trials}) == RACE_TRIALS
    assert {t.status for t in trials} == {TrialStatus.SUCCEEDED}
