"""Early stopping inside the worker, on SQLite and PostgreSQL: the rule reads the job's other curves
in one query, and a real sweep submitted through the API prunes its bad trials."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, event
from sqlalchemy.orm import Session, sessionmaker

from app.api.main import create_app
from app.settings import Settings
from app.store.artifacts import attempt_dir, trial_dir
from app.store.claims import Claim, claim_trial, record_epochs
from app.store.db import transaction
from app.store.jobs import submit_job
from app.worker.hooks import decide
from app.worker.loop import run_worker
from ml.config import EarlyStoppingSpec
from ml.job import JobSpec
from ml.train import Decision, EpochMetrics
from tests.workers import SMALLER_DATA, TINY_TRAIN


def _metrics(curve: list[float]) -> list[EpochMetrics]:
    return [EpochMetrics(e, 1.0, 0.5, 1.0, acc, 0.1, 1.0, 100.0) for e, acc in enumerate(curve, start=1)]


def _record(factory: sessionmaker[Session], claim: Claim, curve: list[float]) -> None:
    with transaction(factory) as session:
        record_epochs(session, claim, [m.as_dict() for m in _metrics(curve)])


@pytest.fixture
def three_claims(factory: sessionmaker[Session]) -> list[Claim]:
    """Trials 0 and 1 of a 9-epoch job with recorded curves; trial 2 claimed, nothing recorded."""
    spec = JobSpec.model_validate({"search": {"space": {"seed": [0, 1, 2]}}, "train": {"epochs": 9}})
    with transaction(factory) as session:
        submit_job(session, spec)
    claims = []
    for worker in ("a", "b", "c"):
        with transaction(factory) as session:
            claim = claim_trial(session, worker, 60.0)
        assert claim is not None
        claims.append(claim)
    _record(factory, claims[0], [0.50, 0.60, 0.70])
    _record(factory, claims[1], [0.40, 0.45, 0.50])
    return claims


@pytest.fixture
def statements(engine: Engine) -> Iterator[list[str]]:
    """Every SQL statement the engine runs while the test body runs."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    yield seen
    event.remove(engine, "before_cursor_execute", record)


def _decide(
    factory: sessionmaker[Session],
    claim: Claim,
    rule: dict[str, Any],
    curve: list[float],
    *,
    may_wait: bool = True,
) -> Decision:
    with transaction(factory) as session:
        rule_spec = EarlyStoppingSpec.model_validate(rule)
        return decide(session, claim, rule_spec, _metrics(curve), may_wait=may_wait)


ASHA = {"strategy": "asha", "min_epochs": 1, "reduction_factor": 3}
MEDIAN = {"strategy": "median", "min_epochs": 2}


@pytest.mark.parametrize(
    ("rule", "curve", "expected"),
    [
        (ASHA, [0.30], Decision.PRUNE),  # rung 1: third of 3 -> not in the top floor(3/3) = 1
        (ASHA, [0.55], Decision.CONTINUE),  # rung 1: best of 3
        (ASHA, [0.55, 0.56], Decision.CONTINUE),  # epoch 2 is no rung
        (ASHA, [0.55, 0.56, 0.60], Decision.PRUNE),  # rung 3: 0.60 < 0.70, keep 1 of 3
        (MEDIAN, [0.30], Decision.CONTINUE),  # before min_epochs
        (MEDIAN, [0.30, 0.40], Decision.PRUNE),  # best 0.40 < median(0.55, 0.425)
        (MEDIAN, [0.30, 0.50], Decision.CONTINUE),  # 0.50 >= 0.4875
        ({"strategy": "none"}, [0.0], Decision.CONTINUE),
    ],
)
def test_decide_applies_the_jobs_rule_to_the_other_trials_curves(
    factory: sessionmaker[Session],
    three_claims: list[Claim],
    rule: dict[str, Any],
    curve: list[float],
    expected: Decision,
) -> None:
    assert _decide(factory, three_claims[2], rule, curve) is expected


def test_asha_pauses_a_trial_while_others_of_the_job_have_still_to_reach_its_rung(
    factory: sessionmaker[Session], three_claims: list[Claim]
) -> None:
    with transaction(factory) as session:
        two_trials = {"search": {"space": {"seed": [0, 1]}}, "train": {"epochs": 9}}
        submit_job(session, JobSpec.model_validate(two_trials))
        first = claim_trial(session, "d", 60.0)
    assert first is not None and first.job_id != three_claims[0].job_id
    # Alone at rung 1 with trial 1 still queued: floor(1/3) = 0 promotions, so it waits ...
    assert _decide(factory, first, ASHA, [0.9]) is Decision.PAUSE
    # ... once: resumed from that pause, the stopping form lets the first arrival go on.
    assert _decide(factory, first, ASHA, [0.9], may_wait=False) is Decision.CONTINUE
    assert _decide(factory, first, MEDIAN, [0.1, 0.1]) is Decision.CONTINUE  # no peers at epoch 2


def test_decide_reads_the_other_curves_in_one_query(
    factory: sessionmaker[Session], three_claims: list[Claim], statements: list[str]
) -> None:
    assert _decide(factory, three_claims[2], ASHA, [0.30]) is Decision.PRUNE
    reads = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(reads) == 1 and "epoch_metrics" in reads[0]


def test_a_trial_at_its_last_epoch_finishes_instead_of_being_pruned(
    factory: sessionmaker[Session], three_claims: list[Claim]
) -> None:
    three_epochs = replace(three_claims[2], config={**three_claims[2].config, "epochs": 3})
    assert _decide(factory, three_epochs, MEDIAN, [0.1, 0.1]) is Decision.PRUNE
    assert _decide(factory, three_epochs, MEDIAN, [0.1, 0.1, 0.1]) is Decision.CONTINUE


# --- a real sweep through the API ------------------------------------------------------------------

EPOCHS = 2
# Trial 0 is bad and first at rung 1: ASHA pauses it (0 of 1 promoted) while the others train
# their first epoch; so do trials 1 (floor(2/3) = 0) and 2. Trial 3 arrives last and is pruned;
# resumed, trials 0 and 2 are pruned and the good trial 1 goes on.
LRS = [1e-7, 1e-3, 2e-7, 3e-7]


@pytest.mark.slow
def test_an_asha_sweep_prunes_its_bad_trials_and_trains_fewer_epochs_than_the_grid(
    worker_settings: Callable[..., Settings], data_dir: Path, one_thread: None
) -> None:
    settings = worker_settings(data_dir=data_dir)
    body = {
        "name": "asha",
        "search": {"space": {"lr": LRS}},
        "train": {**TINY_TRAIN, "epochs": EPOCHS},
        "data": SMALLER_DATA,
        "early_stopping": {"strategy": "asha", "min_epochs": 1, "reduction_factor": 3},
        # Every trial's files kept, so the layout below is each attempt's (the default policy would
        # archive the 4th best and delete last.pt: tests/worker/test_retention_worker.py).
        "retention": {"top_k": None, "keep_last": True},
    }
    with TestClient(create_app(settings)) as client:
        response = client.post("/jobs", json=body)
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        run_worker(settings, max_trials=len(LRS))
        job = client.get(f"/jobs/{job_id}").json()
        details = [client.get(f"/jobs/{job_id}/trials/{t['id']}").json() for t in job["trials"]]
        trial_dirs = [trial_dir(settings.artifacts_dir, job_id, t["id"]) for t in job["trials"]]
        folders = [sorted(p.name for p in folder.iterdir()) for folder in trial_dirs]
        last = [attempt_dir(d, t["attempts"]) for d, t in zip(trial_dirs, job["trials"], strict=True)]
        kept = [sorted(p.name for p in folder.iterdir()) for folder in last]
        # Retention end to end: deleting the finished job removes its rows and its checkpoint files.
        deleted = client.delete(f"/jobs/{job_id}")
        after_delete = client.get(f"/jobs/{job_id}").status_code, client.get("/models").json()

    assert [t["status"] for t in job["trials"]] == ["pruned", "succeeded", "pruned", "pruned"]
    assert [t["pauses"] for t in job["trials"]] == [1, 1, 1, 0]
    assert job["status"] == "succeeded"
    assert job["progress"] == {
        "queued": 0,
        "running": 0,
        "succeeded": 1,
        "failed": 0,
        "pruned": 3,
        "cancelled": 0,
        "eta_seconds": 0.0,  # nothing left to run
    }
    epochs_trained = sum(t["epoch"] for t in job["trials"])
    assert epochs_trained == EPOCHS + 3 < len(LRS) * EPOCHS
    assert job["best"]["params"] == {"lr": 1e-3} and job["best"]["val_accuracy"] >= 0.5
    for trial, detail in zip(job["trials"], details, strict=True):
        assert len(detail["history"]) == trial["epoch"]  # the curve is kept, pruned or not
        assert trial["test_accuracy"] is not None  # pruned trials are tested once on best.pt
    # Best and last per trial, nothing else: a resumed trial's older attempt folder is gone.
    assert folders == [[f"attempt-{t['attempts']}"] for t in job["trials"]]
    assert [t["attempts"] for t in job["trials"]] == [2, 2, 2, 1]
    assert kept == [["best.pt", "last.pt"]] * len(LRS)
    assert deleted.status_code == 204 and after_delete == (404, {"items": []})
    assert not (settings.artifacts_dir / "jobs" / str(job_id)).exists()
