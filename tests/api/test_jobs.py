"""/jobs on SQLite and PostgreSQL: submission, validation, idempotency, pagination, cancel, delete, detail."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from app.api.main import create_app
from app.api.schemas.jobs import JOB_SPEC_EXAMPLE
from app.settings import Settings
from app.store.jobs import refresh_job_status
from app.store.tables import EpochMetric, Job, RegisteredModel, Trial
from ml.status import TrialStatus
from tests.served_models import png_files, register_model

PROBLEM = "application/problem+json"
SMALL = {"name": "small", "search": {"space": {"lr": [0.01, 0.1, 0.2]}}, "train": {"epochs": 3}}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # Model polling effectively off, so only an explicit reload can switch the predictor quickly.
    return settings.model_copy(update={"model_poll_seconds": 300.0})


def submit(client: TestClient, body: dict[str, Any] | None = None, **headers: str) -> dict[str, Any]:
    response = client.post("/jobs", json=SMALL if body is None else body, headers=headers)
    assert response.status_code == 202, response.text
    return response.json()


def set_trials(sessions: sessionmaker[Session], job_id: int, updates: dict[int, dict[str, Any]]) -> None:
    """Write what a worker would (by trial index), then let the queue derive the job's status."""
    with sessions() as session:
        for index, values in updates.items():
            session.execute(
                update(Trial).where(Trial.job_id == job_id, Trial.index == index).values(**values)
            )
        refresh_job_status(session, job_id)
        session.commit()


def finish_all(sessions: sessionmaker[Session], job_id: int, n_trials: int) -> None:
    finished = {"status": "succeeded", "finished_at": func.now(), "started_at": func.now()}
    set_trials(sessions, job_id, dict.fromkeys(range(n_trials), finished))


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def assert_problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["status"] == status and body["title"] and body["detail"]
    return body


# --- POST /jobs -------------------------------------------------------------------------------


def test_submit_the_issue_example_queues_one_trial_per_grid_point(client: TestClient) -> None:
    response = client.post("/jobs", json=JOB_SPEC_EXAMPLE)
    assert response.status_code == 202
    job = response.json()
    assert response.headers["location"] == f"/jobs/{job['id']}"
    assert job["status"] == "queued" and job["name"] == "lr x wd" and job["best"] is None
    assert job["progress"] == {
        "queued": 9,
        "running": 0,
        "succeeded": 0,
        "failed": 0,
        "pruned": 0,
        "cancelled": 0,
        "eta_seconds": None,  # no epoch measured yet
    }
    assert [t["index"] for t in job["trials"]] == list(range(9))
    assert job["trials"][0]["params"] == {"lr": 0.001, "weight_decay": 1e-4}
    assert {t["epochs"] for t in job["trials"]} == {10}
    # The stored spec is normalised: fields the body left out come back with their defaults.
    assert job["spec"]["train"]["nesterov"] is True and job["spec"]["early_stopping"]["strategy"] == "none"
    assert job["created_at"].endswith("Z") and job["started_at"] is None
    assert client.get(response.headers["location"]).json() == job


def test_an_empty_body_is_a_job_with_every_default(client: TestClient) -> None:
    job = submit(client, {})
    assert job["name"] == "sweep" and len(job["trials"]) == 1 and job["trials"][0]["params"] == {}
    assert job["trials"][0]["epochs"] == job["spec"]["train"]["epochs"]


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ({"nmae": "typo"}, "nmae", "Extra inputs are not permitted"),
        ({"train": {"lrr": 0.1}}, "train.lrr", "Extra inputs are not permitted"),
        ({"search": {"space": {"lr": []}}}, "search.space.lr", "at least 1 item"),
        ({"train": {"epochs": "ten"}}, "train.epochs", "valid integer"),
        ({"train": {"lr": -0.1}}, "train.lr", "greater than 0"),
        ({"train": {"epochs": 0}}, "train.epochs", "greater than or equal to 1"),
        ({"data": {"val_size": 0}}, "data.val_size", "greater than or equal to 1"),
        # Sizes that could take a worker down (or overflow) are refused before they reach one.
        ({"train": {"batch_size": 8192}}, "train.batch_size", "less than or equal to 4096"),
        ({"data": {"val_size": 10**30}}, "data.val_size", "less than or equal to 50000"),
        ({"data": {"train_limit": 10**30}}, "data.train_limit", "less than or equal to 50000"),
        ({"early_stopping": {"strategy": "asha", "min_epochs": 10**9}}, "early_stopping.min_epochs", "1000"),
        ({"search": {"space": {"colour": ["red"]}}}, "search", "search.space keys must be train fields"),
        ({"search": {"space": {"lr": [0.1, 0.2], "seed": list(range(501))}}}, "body", "1002 points"),
        ({"search": {"space": {"lr": [0.1, 11.0]}}}, "body", "lr"),
    ],
)
def test_invalid_bodies_are_422_problems_naming_the_field(
    client: TestClient, body: dict[str, Any], field: str, says: str
) -> None:
    problem = assert_problem(client.post("/jobs", json=body), 422)
    fields = [e["field"] for e in problem["errors"]]
    assert any(f == field or f.startswith(field + ".") for f in fields), fields
    assert any(says in e["message"] for e in problem["errors"]), problem["errors"]
    assert field in problem["detail"] and says in problem["detail"]
    assert client.get("/jobs").json()["items"] == []


def test_idempotency_key_returns_the_original_job_and_refuses_another_body(client: TestClient) -> None:
    first = submit(client, SMALL, **{"Idempotency-Key": "sweep-42"})
    again = client.post("/jobs", json=SMALL, headers={"Idempotency-Key": "sweep-42"})
    assert again.status_code == 202 and again.json()["id"] == first["id"]
    assert again.headers["location"] == f"/jobs/{first['id']}"
    other = client.post("/jobs", json={**SMALL, "name": "other"}, headers={"Idempotency-Key": "sweep-42"})
    assert "sweep-42" in assert_problem(other, 422)["detail"]
    assert submit(client, SMALL)["id"] != first["id"]  # no key: always a new job
    assert len(client.get("/jobs").json()["items"]) == 2


def test_concurrent_submissions_with_one_key_make_one_job(client: TestClient) -> None:
    def post(_: int) -> tuple[int, int]:
        response = client.post("/jobs", json=SMALL, headers={"Idempotency-Key": "race"})
        return response.status_code, response.json().get("id")

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(post, range(6)))
    assert {status for status, _ in results} == {202}
    assert len({job_id for _, job_id in results}) == 1
    assert len(client.get("/jobs").json()["items"]) == 1


# --- GET /jobs --------------------------------------------------------------------------------


def test_cursor_pagination_walks_every_job_once_newest_first(client: TestClient) -> None:
    ids = [submit(client, {"name": f"job {i}"})["id"] for i in range(7)]
    seen, cursor, pages = [], None, 0
    while True:
        params: dict[str, Any] = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = client.get("/jobs", params=params).json()
        seen += [item["id"] for item in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(ids, reverse=True) and pages == 3
    # A job submitted mid-walk does not shift the pages already handed out (no offsets).
    first = client.get("/jobs", params={"limit": 3}).json()
    newest = submit(client, {"name": "late"})["id"]
    rest = client.get("/jobs", params={"limit": 100, "cursor": first["next_cursor"]}).json()
    assert newest not in [i["id"] for i in rest["items"]]
    assert [i["id"] for i in first["items"]] + [i["id"] for i in rest["items"]] == seen


def test_list_items_carry_progress_and_the_status_filter_selects(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    kept, cancelled, running = (submit(client)["id"] for _ in range(3))
    client.post(f"/jobs/{cancelled}/cancel")
    set_trials(sessions, running, {0: {"status": "running", "attempts": 1}})
    by_status = {
        s: client.get("/jobs", params={"status": s}).json()["items"] for s in ("queued", "cancelled")
    }
    assert [j["id"] for j in by_status["queued"]] == [kept]
    assert [j["id"] for j in by_status["cancelled"]] == [cancelled]
    assert by_status["cancelled"][0]["progress"]["cancelled"] == 3
    item = client.get("/jobs", params={"status": "running"}).json()["items"][0]
    assert item["id"] == running and item["progress"]["running"] == 1 and item["progress"]["queued"] == 2
    assert set(item) == {
        "id",
        "name",
        "status",
        "created_at",
        "started_at",
        "finished_at",
        "progress",
        "best_val_accuracy",
    }
    assert item["best_val_accuracy"] is None  # no trial has reported yet


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"cursor": "not-a-cursor"}, "query.cursor"),
        ({"cursor": "am9iczow"}, "query.cursor"),  # "jobs:0", well-formed but no such position
        ({"cursor": "x" * 500}, "query.cursor"),
        ({"limit": 0}, "query.limit"),
        ({"limit": 101}, "query.limit"),
        ({"status": "done"}, "query.status"),
    ],
)
def test_bad_list_parameters_are_422(client: TestClient, params: dict[str, Any], field: str) -> None:
    problem = assert_problem(client.get("/jobs", params=params), 422)
    assert [e["field"] for e in problem["errors"]] == [field]


# --- GET /jobs/{id}, trials, best ---------------------------------------------------------------


def test_unknown_job_is_a_404_problem(client: TestClient) -> None:
    problem = assert_problem(client.get("/jobs/987654"), 404)
    assert "987654" in problem["detail"]


def test_best_is_the_highest_val_accuracy_with_its_model(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    job = submit(client)
    set_trials(
        sessions,
        job["id"],
        {
            0: {
                "status": "succeeded",
                "val_accuracy": 0.61,
                "best_epoch": 3,
                "test_accuracy": 0.6,
                "epochs_done": 3,
            },
            1: {"status": "running", "val_accuracy": 0.74, "best_epoch": 2, "epochs_done": 2, "attempts": 1},
        },
    )
    best = client.get(f"/jobs/{job['id']}").json()["best"]
    listed = next(i for i in client.get("/jobs").json()["items"] if i["id"] == job["id"])
    assert listed["best_val_accuracy"] == 0.74
    assert best == {
        "trial_id": job["trials"][1]["id"],
        "point": 1,
        "params": {"lr": 0.1},
        "val_accuracy": 0.74,
        "test_accuracy": None,
        "epoch": 2,
        "model_id": None,  # still running: nothing registered yet
    }
    set_trials(sessions, job["id"], {1: {"status": "succeeded", "test_accuracy": 0.73, "epochs_done": 3}})
    with sessions() as session:
        model = RegisteredModel(
            job_id=job["id"],
            trial_id=job["trials"][1]["id"],
            arch="resnet18",
            epoch=2,
            val_accuracy=0.74,
            test_accuracy=0.73,
            path=f"jobs/{job['id']}/t1.pt",
        )
        session.add(model)
        session.commit()
    after = client.get(f"/jobs/{job['id']}").json()
    assert after["best"]["model_id"] == model.id and after["best"]["test_accuracy"] == 0.73
    assert after["status"] == "running" and after["started_at"] is not None
    assert after["progress"]["succeeded"] == 2 and after["progress"]["queued"] == 1


def test_trial_detail_has_its_history_in_epoch_order(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    job = submit(client)
    trial_id = job["trials"][2]["id"]
    set_trials(
        sessions, job["id"], {2: {"status": "running", "epochs_done": 2, "attempts": 1, "train_loss": 1.1}}
    )
    with sessions() as session:
        for epoch, accuracy in ((2, 0.55), (1, 0.41)):  # inserted out of order on purpose
            session.add(
                EpochMetric(
                    trial_id=trial_id,
                    epoch=epoch,
                    train_loss=2.0 / epoch,
                    train_accuracy=accuracy - 0.05,
                    val_loss=1.9 / epoch,
                    val_accuracy=accuracy,
                    lr=0.1 * epoch,
                    seconds=12.5,
                    images_per_second=800.0 + epoch,
                    attempt=1,
                )
            )
        session.commit()
    response = client.get(f"/jobs/{job['id']}/trials/{trial_id}")
    assert response.status_code == 200
    trial = response.json()
    assert trial["id"] == trial_id and trial["index"] == 2 and trial["status"] == "running"
    assert trial["params"] == {"lr": 0.2} and trial["epoch"] == 2 and trial["train_loss"] == 1.1
    assert [row["epoch"] for row in trial["history"]] == [1, 2]
    assert trial["history"][0] == {
        "epoch": 1,
        "train_loss": 2.0,
        "train_accuracy": pytest.approx(0.36),
        "val_loss": 1.9,
        "val_accuracy": 0.41,
        "lr": 0.1,
        "seconds": 12.5,
        "images_per_second": 801.0,
    }
    # A trial with no epochs yet has an empty history, not a missing one.
    assert client.get(f"/jobs/{job['id']}/trials/{job['trials'][0]['id']}").json()["history"] == []


def test_a_trial_of_another_job_is_404(client: TestClient) -> None:
    one, other = submit(client), submit(client)
    foreign = other["trials"][0]["id"]
    assert "is not in job" in assert_problem(client.get(f"/jobs/{one['id']}/trials/{foreign}"), 404)["detail"]
    assert_problem(client.get(f"/jobs/{one['id']}/trials/{foreign + 1000}"), 404)
    assert_problem(client.get(f"/jobs/{one['id'] + 1000}/trials/{foreign}"), 404)


# --- cancel, delete ------------------------------------------------------------------------


def test_cancel_cancels_queued_trials_and_asks_running_ones_to_stop(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    job = submit(client)
    set_trials(sessions, job["id"], {0: {"status": "running", "attempts": 1}})
    response = client.post(f"/jobs/{job['id']}/cancel")
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "cancelled" and body["finished_at"] is None  # trial 0 is still stopping
    assert [t["status"] for t in body["trials"]] == ["running", "cancelled", "cancelled"]
    assert body["progress"]["cancelled"] == 2 and body["progress"]["queued"] == 0
    with sessions() as session:
        assert (
            session.scalar(select(Trial.cancel_requested).where(Trial.id == job["trials"][0]["id"])) is True
        )
    assert "already cancelled" in assert_problem(client.post(f"/jobs/{job['id']}/cancel"), 409)["detail"]
    assert_problem(client.post("/jobs/424242/cancel"), 404)


def test_cancelling_a_finished_job_is_409(client: TestClient, sessions: sessionmaker[Session]) -> None:
    job = submit(client)
    finish_all(sessions, job["id"], 3)
    assert client.get(f"/jobs/{job['id']}").json()["status"] == "succeeded"
    assert_problem(client.post(f"/jobs/{job['id']}/cancel"), 409)


def test_delete_removes_a_finished_jobs_rows_and_files(
    client: TestClient, sessions: sessionmaker[Session], settings: Settings
) -> None:
    job, neighbour = submit(client), submit(client)
    finish_all(sessions, job["id"], 3)
    finish_all(sessions, neighbour["id"], 3)
    with sessions() as session:
        session.add(
            EpochMetric(
                trial_id=job["trials"][0]["id"],
                epoch=1,
                train_loss=1.0,
                train_accuracy=0.5,
                val_loss=1.0,
                val_accuracy=0.5,
                lr=0.1,
                seconds=1.0,
                images_per_second=100.0,
                attempt=1,
            )
        )
        session.add(
            RegisteredModel(
                job_id=job["id"],
                trial_id=job["trials"][0]["id"],
                arch="resnet18",
                epoch=1,
                val_accuracy=0.5,
                path=f"jobs/{job['id']}/trial-0.pt",
            )
        )
        session.commit()
    job_dir = settings.artifacts_dir / "jobs" / str(job["id"])
    (job_dir / "trial-0").mkdir(parents=True)
    (job_dir / "trial-0.pt").write_bytes(b"checkpoint")
    keep = settings.artifacts_dir / "jobs" / str(neighbour["id"]) / "trial-0.pt"
    keep.parent.mkdir(parents=True)
    keep.write_bytes(b"checkpoint")

    response = client.delete(f"/jobs/{job['id']}")
    assert response.status_code == 204 and response.content == b""
    assert not job_dir.exists() and keep.exists()
    assert_problem(client.get(f"/jobs/{job['id']}"), 404)
    with sessions() as session:
        for table in (Trial, EpochMetric, RegisteredModel):
            assert (
                session.scalar(select(func.count()).select_from(table).where(_of_job(table, job["id"]))) == 0
            )
        assert session.scalar(select(func.count()).where(Trial.job_id == neighbour["id"])) == 3
    assert_problem(client.delete(f"/jobs/{job['id']}"), 404)


def _of_job(table: type, job_id: int) -> Any:
    if table is EpochMetric:
        return EpochMetric.trial_id.in_(select(Trial.id).where(Trial.job_id == job_id))
    return table.job_id == job_id  # type: ignore[attr-defined]


def test_deleting_the_served_models_job_makes_predict_drop_it(
    client: TestClient, sessions: sessionmaker[Session], settings: Settings
) -> None:
    model_id = register_model(sessions, settings.artifacts_dir, val_accuracy=0.8)
    predictor = client.app.state.predictor  # type: ignore[attr-defined]
    predictor.request_reload()
    wait_for(lambda: predictor.status()["model_id"] == model_id)
    with sessions() as session:
        job_id = session.get(RegisteredModel, model_id).job_id  # type: ignore[union-attr]
    assert client.delete(f"/jobs/{job_id}").status_code == 204
    wait_for(lambda: predictor.status()["model_id"] is None)  # at once, not at the next poll
    assert_problem(client.post("/predict", files=[("file", ("a.png", png_files(1)[0]))]), 503)


def test_delete_refuses_unfinished_jobs(client: TestClient, sessions: sessionmaker[Session]) -> None:
    queued = submit(client)
    assert "cancel it first" in assert_problem(client.delete(f"/jobs/{queued['id']}"), 409)["detail"]
    stopping = submit(client)
    set_trials(sessions, stopping["id"], {0: {"status": "running", "attempts": 1}})
    assert_problem(client.delete(f"/jobs/{stopping['id']}"), 409)
    client.post(f"/jobs/{stopping['id']}/cancel")
    # Cancelled, but trial 0 has not stopped yet: its worker may still write files.
    assert (
        "still has trials stopping" in assert_problem(client.delete(f"/jobs/{stopping['id']}"), 409)["detail"]
    )
    set_trials(sessions, stopping["id"], {0: {"status": "cancelled", "finished_at": func.now()}})
    assert client.get(f"/jobs/{stopping['id']}").json()["finished_at"] is not None
    assert client.delete(f"/jobs/{stopping['id']}").status_code == 204
    with sessions() as session:
        assert session.get(Job, queued["id"]) is not None


# --- the application around the routes --------------------------------------------------------


def test_an_unexpected_error_is_a_500_problem_without_internals(client: TestClient) -> None:
    def boom() -> None:
        raise RuntimeError("secret internals")

    client.app.add_api_route("/boom", boom)  # type: ignore[attr-defined]
    problem = assert_problem(client.get("/boom"), 500)
    assert "secret" not in problem["detail"]


def test_unknown_routes_and_methods_are_problems(client: TestClient) -> None:
    assert_problem(client.get("/nowhere"), 404)
    assert_problem(client.put("/jobs"), 405)


def test_an_api_key_guards_the_api_but_not_the_probes(settings: Settings) -> None:
    keyed = settings.model_copy(update={"api_key": "s3cret"})
    with TestClient(create_app(keyed), raise_server_exceptions=False) as client:
        assert_problem(client.get("/jobs"), 401)
        assert_problem(client.post("/jobs", json={}, headers={"Authorization": "Bearer wrong"}), 401)
        assert_problem(client.get("/models"), 401)
        assert client.get("/jobs", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200


def test_every_response_carries_a_request_id(client: TestClient) -> None:
    assert client.get("/jobs", headers={"X-Request-ID": "trace-1"}).headers["x-request-id"] == "trace-1"
    assert len(client.get("/jobs/999").headers["x-request-id"]) == 32


def test_openapi_documents_jobspec_as_the_body_with_the_example(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    post = schema["paths"]["/jobs"]["post"]
    body = post["requestBody"]["content"]["application/json"]
    assert body["schema"]["$ref"].endswith("/JobSpec")
    example = body["examples"]["grid"]["value"]
    assert example["search"] == JOB_SPEC_EXAMPLE["search"] and example["train"] == JOB_SPEC_EXAMPLE["train"]
    assert "application/problem+json" in post["responses"]["422"]["content"]
    statuses = schema["components"]["schemas"]["TrialOut"]["properties"]["status"]["enum"]
    assert statuses == list(TrialStatus)


def finished_with(val: float) -> dict[str, Any]:
    counts = {"val_images": 5000, "test_images": 10000}
    return {
        "status": "succeeded",
        "val_accuracy": val,
        "test_accuracy": val - 0.01,
        **counts,
        "epochs_done": 1,
    }


def test_repeats_report_mean_and_std_per_point_and_best_is_chosen_on_the_mean(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    body = {"search": {"space": {"lr": [0.1, 0.2]}, "repeats": 3}, "train": {"epochs": 1}}
    job = submit(client, body)
    assert [(t["point"], t["params"]["lr"]) for t in job["trials"]] == [(0, 0.1)] * 3 + [(1, 0.2)] * 3
    # Point 1 has the single highest run (0.95) but point 0 the higher mean (0.90 vs 0.80).
    vals = [0.89, 0.90, 0.91, 0.95, 0.70, 0.75]
    set_trials(
        sessions,
        job["id"],
        {i: finished_with(v) for i, v in enumerate(vals)},
    )
    out = client.get(f"/jobs/{job['id']}").json()
    first, second = out["points"]
    assert first["val_mean"] == pytest.approx(0.90) and first["val_std"] == pytest.approx(0.01)
    assert first["test_mean"] == pytest.approx(0.89) and first["succeeded"] == 3
    assert second["val_mean"] == pytest.approx(0.80) and second["val_std"] == pytest.approx(
        0.1322876, rel=1e-5
    )
    assert out["best"]["point"] == 0 and out["best"]["trial_id"] == job["trials"][2]["id"]  # its best repeat
    low, high = first["val_interval"]
    assert low < 0.90 < high and high - low > 2 * 1.96 * 0.01 / 3**0.5  # wider than the seed noise alone
    assert first["tied_with_best"] is True
    assert second["tied_with_best"] is True  # 0.80 +- 0.15 reaches the best's interval


def test_every_accuracy_carries_its_interval_and_the_tie_group_is_marked(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    job = submit(client, {"search": {"space": {"lr": [0.1, 0.2, 0.3]}}, "train": {"epochs": 1}})
    set_trials(
        sessions,
        job["id"],
        {
            0: finished_with(0.900),
            1: finished_with(0.895),
            2: {"status": "running", "val_accuracy": 0.80},  # no count yet: data.val_size stands in
        },
    )
    trials = client.get(f"/jobs/{job['id']}").json()["trials"]
    best, _close, behind = trials
    low, high = best["val_interval"]
    assert low == pytest.approx(0.8915, abs=5e-4) and high == pytest.approx(0.9079, abs=5e-4)  # +-0.8 points
    assert best["test_interval"][1] - best["test_interval"][0] < high - low  # 10,000 images: narrower
    assert behind["val_interval"] is not None and behind["test_interval"] is None
    assert [t["tied_with_best"] for t in trials] == [True, True, False]
    detail = client.get(f"/jobs/{job['id']}/trials/{best['id']}").json()
    assert detail["val_interval"] == best["val_interval"]


def test_an_adaptive_job_starts_with_no_trials_and_a_target(client: TestClient) -> None:
    space = {"lr": {"low": 1e-3, "high": 1.0, "log": True}}
    job = submit(
        client, {"search": {"strategy": "tpe", "space": space, "trials": 12}, "train": {"epochs": 1}}
    )
    assert job["trials"] == [] and job["points"] == [] and job["status"] == "queued"
    assert job["spec"]["search"]["strategy"] == "tpe"
    bad = client.post("/jobs", json={"search": {"strategy": "tpe", "space": space}})
    assert "needs trials" in assert_problem(bad, 422)["errors"][0]["message"]


def test_a_trial_error_is_answered_without_filesystem_paths(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    job = submit(client)
    trial_id = job["trials"][0]["id"]
    with sessions() as session, session.begin():
        trial = session.get(Trial, trial_id)
        assert trial is not None
        trial.error = (
            "OverflowError: int too large (at /home/someone/sweepserve/ml/data.py:86 in make_splits)"
        )
    shown = client.get(f"/jobs/{job['id']}/trials/{trial_id}").json()["error"]
    assert shown == "OverflowError: int too large (at data.py:86 in make_splits)"
    assert "/home/" not in client.get(f"/jobs/{job['id']}").text
