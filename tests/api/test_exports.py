"""CSV exports on SQLite and PostgreSQL: trials.csv (one row per trial, one column per swept
parameter) read back with pandas, history.csv (one row per trial and epoch), and the CLI's
`status --csv` writing both."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from app.cli.client import save_csvs
from app.store.tables import EpochMetric, Trial
from tests.served_models import problem

GRID = {"search": {"space": {"lr": [0.01, 0.1, 0.2], "weight_decay": [1e-4, 5e-4]}}, "train": {"epochs": 3}}


def _epochs(sessions: sessionmaker[Session], trial_id: int, n: int) -> None:
    with sessions() as session:
        for epoch in range(1, n + 1):
            metrics = {"train_loss": 1.0 / epoch, "train_accuracy": 0.5, "val_loss": 1.0, "lr": 0.1,
                       "val_accuracy": 0.1 * epoch, "seconds": 2.5, "images_per_second": 100.0}  # fmt: skip
            session.add(EpochMetric(trial_id=trial_id, epoch=epoch, attempt=1, **metrics))
        session.execute(
            update(Trial).where(Trial.id == trial_id).values(epochs_done=n, val_accuracy=0.1 * n, attempts=1)
        )
        session.commit()


def test_trials_csv_opens_in_pandas_with_a_column_per_swept_parameter(
    client: TestClient, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    job = client.post("/jobs", json=GRID).json()
    first, second = job["trials"][0]["id"], job["trials"][1]["id"]
    _epochs(sessions, first, 2)
    _epochs(sessions, second, 1)
    response = client.get(f"/jobs/{job['id']}/trials.csv")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    assert f"job-{job['id']}-trials.csv" in response.headers["content-disposition"]
    trials = pd.read_csv(io.StringIO(response.text))
    assert len(trials) == 6
    tail = ["epochs_done", "best_val_accuracy", "test_accuracy", "attempts", "preemptions", "seconds"]
    assert list(trials.columns) == ["trial_id", "index", "status", "lr", "weight_decay", *tail]
    assert sorted(zip(trials["lr"], trials["weight_decay"], strict=True)) == sorted(
        (t["params"]["lr"], t["params"]["weight_decay"]) for t in job["trials"]
    )
    row = trials.set_index("trial_id").loc[first]
    assert (row["epochs_done"], row["best_val_accuracy"], row["seconds"], row["status"]) == (
        2,
        0.2,
        5.0,
        "queued",
    )

    history = pd.read_csv(io.StringIO(client.get(f"/jobs/{job['id']}/history.csv").text))
    assert list(zip(history["trial_id"], history["epoch"], strict=True)) == [
        (first, 1),
        (first, 2),
        (second, 1),
    ]
    assert history["val_accuracy"].tolist() == [0.1, 0.2, 0.1]

    written = save_csvs(client, job["id"], tmp_path / "out")  # what `sweepserve status --csv DIR` does
    assert [p.name for p in written] == [f"job-{job['id']}-trials.csv", f"job-{job['id']}-history.csv"]
    assert len(pd.read_csv(written[0])) == 6 and len(pd.read_csv(written[1])) == 3


def test_exports_of_an_unknown_job_are_404(client: TestClient) -> None:
    problem(client.get("/jobs/999/trials.csv"), 404)
    problem(client.get("/jobs/999/history.csv"), 404)
