"""The CLI client: spec files, submit/status/predict/models over real HTTP, --watch with ETAs,
errors as one line and exit code 1, and `worker --check`."""

from __future__ import annotations

import io
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from rich.console import Console
from sqlalchemy import select

from app.api.main import create_app
from app.cli import client as cli_client
from app.cli.main import main
from app.settings import Settings
from app.store.db import db_time, transaction
from app.store.tables import Worker
from tests.live_server import serve
from tests.log_state import preserved_logging
from tests.served_models import png_files, register_model
from tests.sweep_rows import advance, start_trial, write_sweep

KEY = "k3y"


@pytest.fixture(autouse=True)
def restore_logging(capsys: pytest.CaptureFixture[str]) -> Iterator[None]:
    # app.cli.main configures logging onto pytest's captured stderr. Taking capsys here sets it up
    # first, so it closes last: the live server's shutdown lines (logged after the test body) still
    # reach an open stream, and the handlers are put back before it closes ("Logging error" else).
    with preserved_logging():
        yield


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=f"sqlite:///{tmp_path / 'client.db'}",
        artifacts_dir=tmp_path / "artifacts",
        allow_download=False,
        api_key=KEY,
        model_poll_seconds=0.05,
    )


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    return create_app(settings)


@pytest.fixture
def api(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, headers={"Authorization": f"Bearer {KEY}"}) as test_client:
        yield test_client


@pytest.fixture
def server(app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The app on a socket, with the CLI's environment pointing at it (key included)."""
    monkeypatch.setenv("SWEEPSERVE_API_KEY", KEY)
    monkeypatch.setenv("COLUMNS", "160")  # rich wraps tables to the terminal width
    with serve(app) as url:
        yield url


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --- specs -----------------------------------------------------------------------------------


def test_specs_load_from_yaml_json_and_empty_files(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text("name: y\nsearch:\n  space:\n    lr: [0.1, 0.2]\n")
    (tmp_path / "s.json").write_text('{"name": "j", "train": {"epochs": 2}}')
    (tmp_path / "empty.yml").write_text("")
    assert cli_client.load_spec(str(tmp_path / "s.yaml")) == {
        "name": "y",
        "search": {"space": {"lr": [0.1, 0.2]}},
    }
    assert cli_client.load_spec(str(tmp_path / "s.json"))["train"] == {"epochs": 2}
    assert cli_client.load_spec(str(tmp_path / "empty.yml")) == {}
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping"):
        cli_client.load_spec(str(tmp_path / "list.yaml"))


# --- ETA -------------------------------------------------------------------------------------


def test_eta_is_mean_epoch_time_times_epochs_left() -> None:
    running = {"status": "running", "epoch": 2, "epochs": 10}
    assert cli_client.eta_seconds(running, [30.0, 50.0]) == 8 * 40.0
    assert cli_client.eta_seconds(running, []) is None  # no epoch finished yet: unknown
    assert cli_client.eta_seconds({**running, "status": "succeeded"}, [30.0]) is None
    job = {
        "progress": {"running": 2},
        "trials": [
            {"status": "running", "epoch": 2, "epochs": 10},
            {"status": "running", "epoch": 5, "epochs": 10},
            {"status": "queued", "epoch": 0, "epochs": 10},
            {"status": "succeeded", "epoch": 10, "epochs": 10},
        ],
    }
    assert cli_client.job_eta_seconds(job, [20.0]) == (8 + 5 + 10) * 20.0 / 2  # two trials at a time
    assert cli_client.format_duration(3725) == "1:02:05" and cli_client.format_duration(65) == "1:05"


def test_watch_shows_bars_until_the_job_finishes_and_reads_histories_only_on_new_epochs(
    api: TestClient,
) -> None:
    factory = api.app.state.session_factory  # type: ignore[attr-defined]
    job_id, trials = start_trial(factory, n_trials=2, epochs=3)
    steps = iter(
        [(trials[0], 1), (trials[0], 2), (trials[1], 1), (trials[0], 3), (trials[1], 2), (trials[1], 3)]
    )
    trial_reads: list[str] = []
    api.event_hooks["request"].append(
        lambda request: trial_reads.append(request.url.path) if "/trials/" in request.url.path else None
    )

    def next_epoch(_seconds: float) -> None:  # instead of sleeping: a worker finishes another epoch
        trial_id, epoch = next(steps)
        advance(factory, trial_id, epoch, finished=epoch == 3)

    out = io.StringIO()
    job = cli_client.watch_job(api, job_id, Console(file=out, width=150), interval=0, sleep=next_epoch)
    assert job["status"] == "succeeded" and job["progress"]["succeeded"] == 2
    text = out.getvalue()
    assert "2/2 trials" in text and text.count("3/3 ep") == 2 and "succeeded" in text
    # Read only for a running trial with a new epoch: t0 at 1 and 2, t1 at 1 and 2 (not once per poll).
    assert trial_reads == [f"/jobs/{job_id}/trials/{t}" for t in (trials[0], trials[0], trials[1], trials[1])]


# --- the commands, over HTTP -----------------------------------------------------------------


def test_submit_then_status_with_the_key_from_the_environment(
    server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: cli sweep\nsearch:\n  space:\n    lr: [0.01, 0.1]\ntrain:\n  epochs: 2\n")
    code, out, err = run_cli(capsys, "submit", str(spec), "--url", server, "--idempotency-key", "once")
    assert code == 0 and out.startswith("job 1 queued: 2 trial(s)") and f"{server}/ui/jobs/1" in out
    assert "httpx" not in err  # no line per HTTP request (the server's own lines share this process)
    code, out, _ = run_cli(
        capsys, "submit", str(spec), "--url", server, "--idempotency-key", "once", "--json"
    )
    assert code == 0 and json.loads(out)["id"] == 1  # the same job again
    code, out, _ = run_cli(capsys, "status", "1", "--url", server)
    assert code == 0 and "cli sweep" in out and "lr=0.01" in out and "lr=0.1" in out
    assert "best: no trial has a validation accuracy yet" in out


def test_status_of_a_finished_sweep_marks_the_best_trial(
    server: str, app: FastAPI, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = write_sweep(app.state.session_factory, n_trials=3)
    code, out, _ = run_cli(capsys, "status", str(sweep.job_id), "--watch", "--url", server)
    assert code == 0  # --watch on a finished job: one look, exit 0 because it succeeded
    assert f"best: trial {sweep.best_trial_id} (lr=0.15) val 71.00%" in out
    assert "pruned" in out and "4/4" in out


def test_predict_and_models(
    server: str, app: FastAPI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model_id = register_model(app.state.session_factory, tmp_path / "artifacts", val_accuracy=0.75)
    images = []
    for i, blob in enumerate(png_files(2)):
        images.append(tmp_path / f"img{i}.png")
        images[-1].write_bytes(blob)
    code, out, _ = run_cli(capsys, "models", "--url", server)
    assert code == 0 and "75.00%" in out and "*" in out
    deadline = time.monotonic() + 30
    while app.state.predictor.status()["model_id"] != model_id:  # loaded within a few polls
        assert time.monotonic() < deadline, "the model was never loaded"
        time.sleep(0.05)
    code, out, _ = run_cli(capsys, "predict", *map(str, images), "--url", server, "--json")
    assert code == 0
    answer = json.loads(out)
    assert answer["model"]["id"] == model_id and len(answer["predictions"]) == 2
    code, out, _ = run_cli(capsys, "predict", *map(str, images), "--url", server, "--tta")
    assert code == 0 and "img0.png" in out and "img1.png" in out and f"model {model_id}" in out


def test_errors_are_one_line_on_stderr_with_exit_code_1(
    server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"train": {"lr": -1}}')
    code, out, err = run_cli(capsys, "submit", str(bad), "--url", server)
    assert code == 1 and out == "" and "HTTP 422" in err and "train.lr" in err
    code, _, err = run_cli(capsys, "status", "99", "--url", server)
    assert code == 1 and "HTTP 404" in err and "99" in err
    code, _, err = run_cli(capsys, "submit", str(tmp_path / "missing.yaml"), "--url", server)
    assert code == 1 and "missing.yaml" in err
    monkeypatch.setenv("SWEEPSERVE_API_KEY", "wrong")
    code, _, err = run_cli(capsys, "models", "--url", server)
    assert code == 1 and "HTTP 401 Unauthorized" in err
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    code, _, err = run_cli(capsys, "models", "--url", closed)
    assert code == 1 and "cannot reach" in err


def test_api_errors_carry_the_problem(api: TestClient) -> None:
    with pytest.raises(cli_client.ApiError) as raised:
        cli_client.submit_job(api, {"search": {"space": {"nope": [1]}}})
    assert raised.value.status == 422 and "nope" in str(raised.value)
    assert isinstance(raised.value.problem["errors"], list)
    with pytest.raises(httpx.HTTPError):
        cli_client.get_job(cli_client.connect("http://127.0.0.1:9", None), 1)


# --- worker --check ------------------------------------------------------------------------------


def test_worker_check_exit_code_follows_this_hosts_heartbeat(
    settings: Settings, api: TestClient, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SWEEPSERVE_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("SWEEPSERVE_HEARTBEAT_SECONDS", "10")
    code, out, _ = run_cli(capsys, "worker", "--check")
    assert code == 1 and socket.gethostname() in out
    with transaction(api.app.state.session_factory) as session:  # type: ignore[attr-defined]
        now = float(session.scalar(select(db_time(session.get_bind()))))  # type: ignore[arg-type]
        session.add(Worker(id="w1", hostname=socket.gethostname(), pid=1, heartbeat_at=now - 2))
    code, out, err = run_cli(capsys, "worker", "--check")
    assert code == 0 and "w1: last heartbeat" in out
    assert err == ""  # a healthcheck says one line, no library chatter
