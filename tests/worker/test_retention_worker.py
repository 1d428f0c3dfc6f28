"""Retention with real workers: after a 6-trial grid with the default policy the job keeps the
best.pt of its top 3 (and the served model) and no last.pt of a finished trial; /predict, extend
and retry still work on what was kept, and an archived model's id answers 410."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.api.main import create_app
from app.settings import Settings
from app.store.artifacts import job_dir
from app.store.db import transaction
from app.store.jobs import submit_job
from app.store.steering import retry_trial
from app.store.tables import RegisteredModel
from tests.postgres import ONE_DATABASE
from tests.served_models import png_files, problem, wait_until_serving
from tests.workers import SMALLER_DATA, epoch_rows, tiny_spec, trial_row, worker_thread

pytestmark = pytest.mark.slow


def _train(settings: Settings, trials: int) -> None:
    thread, errors = worker_thread(settings, max_trials=trials)
    thread.join()
    assert errors == []


def _files(folder: Path, name: str) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob(name))


def _predict(client: TestClient, model_id: int | None = None) -> object:
    params = {} if model_id is None else {"model_id": model_id}
    return client.post("/predict", params=params, files=[("file", ("0.png", png_files(1)[0], "image/png"))])


@ONE_DATABASE  # the policy's statements are plain ORM; the scenario is what is tested here
@pytest.mark.usefixtures("one_thread")
def test_a_six_trial_grid_keeps_the_top_three_and_still_predicts_extends_and_retries(
    factory: sessionmaker[Session], worker_settings: Callable[..., Settings], data_dir: Path
) -> None:
    settings = worker_settings(data_dir=data_dir, model_poll_seconds=0.2)
    with transaction(factory) as session:
        job, _ = submit_job(
            session, tiny_spec(1, seeds=tuple(range(6)), max_attempts=1, data=SMALLER_DATA, retention=None)
        )
        job_id, trial_ids = job.id, [t.id for t in job.trials]
    _train(worker_settings(), 1)  # no data set here: the first trial fails, to be retried below
    failed_id = next(i for i in trial_ids if trial_row(factory, i).status == "failed")
    _train(settings, 5)
    with transaction(factory) as session:
        retry_trial(session, job_id, failed_id)
    _train(settings, 1)
    assert trial_row(factory, failed_id).status == "succeeded"  # retry worked

    folder = job_dir(settings.artifacts_dir, job_id)
    trials = [trial_row(factory, i) for i in trial_ids]
    assert all(t.status == "succeeded" for t in trials)
    assert _files(folder, "last.pt") == []  # no finished trial keeps its optimiser state
    best_files = _files(folder, "best.pt")
    assert len(best_files) <= 4
    ranked = sorted(trials, key=lambda t: (-(t.val_accuracy or 0), t.index))
    top, rest = ranked[:3], ranked[3:]
    with factory() as session:
        models = {m.trial_id: m for m in session.scalars(select(RegisteredModel))}
    for trial in top:
        assert trial.archived_at is None and models[trial.id].archived_at is None
        assert (settings.artifacts_dir / models[trial.id].path).is_file()
    archived = [t for t in rest if t.archived_at is not None]
    assert archived, "the trials outside the top 3 are archived (unless one of them is served)"
    for trial in archived:
        assert (
            models[trial.id].archived_at is not None and models[trial.id].val_accuracy == trial.val_accuracy
        )
        assert not (settings.artifacts_dir / "jobs" / str(job_id) / "trials" / str(trial.id)).exists()

    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        best_model = models[top[0].id].id
        wait_until_serving(client, best_model)
        assert _predict(client).status_code == 200  # type: ignore[attr-defined]
        gone = models[archived[0].id].id
        assert "archived" in problem(_predict(client, gone), 410)["detail"]
        problem(client.post(f"/models/{gone}/promote"), 410)
        job_out = client.get(f"/jobs/{job_id}").json()
        assert job_out["disk_bytes"] == sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        assert sum(t["archived_at"] is not None for t in job_out["trials"]) == len(archived)
        problem(client.post(f"/jobs/{job_id}/extend", json={"epochs": 2, "trial_ids": [archived[0].id]}), 409)

        # extend continues the best trial from its best.pt alone (no last.pt was kept)
        response = client.post(f"/jobs/{job_id}/extend", json={"epochs": 2, "top_k": 1})
        assert response.status_code == 202, response.text
        _train(settings, 1)
        extended = trial_row(factory, top[0].id)
        assert (extended.status, extended.epochs_done) == ("succeeded", 2), extended.error
        assert [r.epoch for r in epoch_rows(factory, extended.id)] == [1, 2]
        assert _predict(client).status_code == 200  # type: ignore[attr-defined]
    assert _files(folder, "last.pt") == []
    assert len(_files(folder, "best.pt")) <= 4
