"""Restarts mid-sweep lose nothing: the API process killed and started again (SQLite and
PostgreSQL), and PostgreSQL itself stopped and started under a training worker (a private server
started by this test on a free port, never the shared one on 5432)."""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.orm import Session, sessionmaker

from app.settings import Settings
from app.store.db import make_engine, session_factory, transaction, upgrade_to_head
from app.store.jobs import submit_job
from app.store.tables import Job
from tests.postgres import ONE_DATABASE
from tests.workers import (
    SMALLER_DATA,
    TRAIN_TIMEOUT_S,
    epoch_rows,
    start_process,
    stop_process,
    tiny_spec,
    trial_row,
    wait_for,
    worker_thread,
)

EPOCHS = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def _start_api(settings: Settings, port: int, log_file: Path) -> subprocess.Popen[bytes]:
    api = start_process(settings, log_file, "-m", "app.cli", "serve", "--workers", "0", "--port", str(port))
    wait_for(lambda: _answers(f"http://127.0.0.1:{port}/healthz"), api, log_file)
    return api


def _job_finished(factory: sessionmaker[Session], job_id: int) -> bool:
    with factory() as session:
        job = session.get(Job, job_id)
        return job is not None and job.finished_at is not None


@ONE_DATABASE
@pytest.mark.slow
def test_killing_and_restarting_the_api_mid_sweep_loses_nothing(
    factory: sessionmaker[Session], worker_settings: Callable[..., Settings], data_dir: Path, tmp_path: Path
) -> None:
    settings = worker_settings(data_dir=data_dir, lease_seconds=60.0)
    port, log_file = _free_port(), tmp_path / "api.log"
    base = f"http://127.0.0.1:{port}"
    api = _start_api(settings, port, log_file)
    stop = threading.Event()
    worker, errors = worker_thread(settings, max_trials=None, stop=stop)
    try:
        spec = tiny_spec(epochs=EPOCHS, seeds=(0, 1), data=SMALLER_DATA)
        job = httpx.post(f"{base}/jobs", json=spec.model_dump(mode="json")).json()
        first_trial = job["trials"][0]["id"]
        wait_for(lambda: len(epoch_rows(factory, first_trial)) >= 1, api, log_file)
        os.kill(api.pid, signal.SIGKILL)  # the API process this test started, by its pid
        api.wait(timeout=30)
        assert not _answers(f"{base}/healthz")
        wait_for(lambda: len(epoch_rows(factory, first_trial)) >= 2)  # training went on meanwhile
        api = _start_api(settings, port, log_file)
        wait_for(lambda: _job_finished(factory, job["id"]))
        after = httpx.get(f"{base}/jobs/{job['id']}").json()
        details = [httpx.get(f"{base}/jobs/{job['id']}/trials/{t['id']}").json() for t in after["trials"]]
        listed = httpx.get(f"{base}/jobs").json()["items"]
    finally:
        stop.set()
        worker.join(timeout=TRAIN_TIMEOUT_S)
        stop_process(api)
    assert errors == []
    assert after["status"] == "succeeded" and after["progress"]["succeeded"] == 2
    assert [item["id"] for item in listed] == [job["id"]]
    for trial, detail in zip(after["trials"], details, strict=True):
        assert (trial["status"], trial["epoch"], trial["attempts"]) == ("succeeded", EPOCHS, 1)
        assert [row["epoch"] for row in detail["history"]] == list(range(1, EPOCHS + 1))
    assert after["best"]["model_id"] is not None


# --- PostgreSQL restarted under a worker ----------------------------------------------------------


class PrivatePostgres:
    """A throwaway PostgreSQL cluster in a temp dir, run as the `postgres` user on a free port."""

    def __init__(self, bin_dir: Path, root: Path) -> None:
        self.bin_dir, self.root = bin_dir, root
        self.data, self.log = root / "data", root / "server.log"
        self.port = _free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *argv: str) -> None:
        command = [str(self.bin_dir / argv[0]), *argv[1:]]
        if os.geteuid() == 0:  # the server refuses to run as root
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def init(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")


def _postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(found[-1]).parent if found else None


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    bin_dir = _postgres_bin()
    if bin_dir is None:
        if os.environ.get("CI"):
            pytest.fail("no PostgreSQL server binaries in /usr/lib/postgresql/*/bin and CI is set")
        pytest.skip("no PostgreSQL server binaries in /usr/lib/postgresql/*/bin")
    root = Path(tempfile.mkdtemp(prefix="sweepserve-pg-"))  # not under pytest's root-only tmp dirs
    server = PrivatePostgres(bin_dir, root)
    try:
        server.init()
        server.start()
        yield server
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            server.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.postgres
def test_restarting_postgresql_mid_trial_loses_nothing(
    private_postgres: PrivatePostgres,
    data_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    one_thread: None,
) -> None:
    upgrade_to_head(private_postgres.url)
    engine = make_engine(private_postgres.url)
    factory = session_factory(engine)
    with transaction(factory) as session:
        job, _ = submit_job(session, tiny_spec(epochs=EPOCHS, data=SMALLER_DATA))
        job_id, trial_id = job.id, job.trials[0].id
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]  # no developer .env
        database_url=private_postgres.url,
        artifacts_dir=tmp_path / "artifacts",
        data_dir=data_dir,
        allow_download=False,
        lease_seconds=60.0,  # longer than the outage: the attempt survives it
        heartbeat_seconds=0.5,
        poll_seconds=0.1,
    )
    caplog.set_level(logging.WARNING, logger="sweepserve.worker")
    worker, errors = worker_thread(settings, max_trials=1)
    try:
        wait_for(lambda: len(epoch_rows(factory, trial_id)) >= 1 or not worker.is_alive())
        private_postgres.stop("fast")  # drops every connection, like a restart or failover
        time.sleep(4.0)  # longer than an epoch: the next epoch's write finds no server
        private_postgres.start()
    finally:
        worker.join(timeout=TRAIN_TIMEOUT_S)
    assert not worker.is_alive() and errors == []
    trial = trial_row(factory, trial_id)
    assert (trial.status, trial.attempts, trial.epochs_done) == ("succeeded", 1, EPOCHS), trial.error
    rows = [(row.epoch, row.attempt) for row in epoch_rows(factory, trial_id)]
    assert rows == [(epoch, 1) for epoch in range(1, EPOCHS + 1)]  # each epoch once, by the one attempt
    assert _job_finished(factory, job_id)
    retried = [r.getMessage() for r in caplog.records if "database unavailable" in r.getMessage()]
    assert retried, "the worker never saw the server down"
    engine.dispose()
