"""The `sweepserve` command line: argument parsing, `migrate`, and `serve` supervising its workers."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
from sqlalchemy import create_engine, inspect, select
from sqlalchemy.orm import Session

from app.cli.args import gpu_list
from app.cli.main import build_parser
from app.cli.serve import next_restart, split_gpus, worker_command
from app.store.db import head_revision, schema_revision
from app.store.tables import Worker

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


# --- parsing ------------------------------------------------------------------------------------


def test_serve_defaults_and_options() -> None:
    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.workers, args.gpus) == ("127.0.0.1", 8000, 1, None)
    args = build_parser().parse_args(["serve", "--port", "9000", "--workers", "0", "--gpus", "0,1"])
    assert (args.port, args.workers, args.gpus) == (9000, 0, [0, 1])


@pytest.mark.parametrize(
    "argv", [["serve", "--workers", "-1"], ["worker", "--gpus", "0,x"], ["frobnicate"], []]
)
def test_bad_arguments_exit_with_usage(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(argv)
    assert exit_info.value.code == 2 and "usage: sweepserve" in capsys.readouterr().err


def test_gpu_list_reads_ids_and_the_empty_cpu_list() -> None:
    assert gpu_list("0,1") == [0, 1] and gpu_list(" 3 ") == [3] and gpu_list("") == []
    with pytest.raises(argparse.ArgumentTypeError):
        gpu_list("-1")


@pytest.mark.parametrize(
    ("gpus", "workers", "expected"),
    [
        (None, 2, [None, None]),
        ([], 2, [[], []]),
        ([0, 1], 1, [[0, 1]]),
        ([0, 1, 2, 3], 2, [[0, 1], [2, 3]]),
        ([0, 1, 2], 2, [[0, 1], [2]]),
        ([0, 1], 3, [[0], [1], [0]]),
        ([0, 1], 0, []),
    ],
)
def test_split_gpus_shares_devices_among_workers(
    gpus: list[int] | None, workers: int, expected: list[list[int] | None]
) -> None:
    assert split_gpus(gpus, workers) == expected


def test_worker_command_passes_its_gpus() -> None:
    assert worker_command(None)[1:] == ["-m", "app.cli", "worker"]
    assert worker_command([2, 3])[-2:] == ["--gpus", "2,3"]
    assert worker_command([])[-2:] == ["--gpus", ""]  # the CPU, not "all GPUs"


def test_a_worker_that_keeps_dying_is_restarted_ever_more_slowly() -> None:
    deaths, delays = 0, []
    for _ in range(8):
        deaths, delay = next_restart(deaths, ran=0.5)
        delays.append(delay)
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60]
    assert next_restart(deaths, ran=3600) == (0, 1)  # a worker that ran a long time died by accident


# --- processes ----------------------------------------------------------------------------------


def _env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "SWEEPSERVE_DATABASE_URL": f"sqlite:///{tmp_path / 'sweepserve.db'}",
        "SWEEPSERVE_ARTIFACTS_DIR": str(tmp_path / "artifacts"),
        "SWEEPSERVE_DATA_DIR": str(tmp_path / "data"),
        "SWEEPSERVE_ALLOW_DOWNLOAD": "false",
        "SWEEPSERVE_POLL_SECONDS": "0.2",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }


def _sweepserve(*argv: str) -> list[str]:
    return [sys.executable, "-m", "app.cli", *argv]


def test_migrate_creates_the_schema_and_is_idempotent(tmp_path: Path) -> None:
    for _ in range(2):
        done = subprocess.run(
            _sweepserve("migrate"), env=_env(tmp_path), cwd=tmp_path, capture_output=True, timeout=120
        )
        assert done.returncode == 0, done.stderr.decode()[-2000:]
    engine = create_engine(f"sqlite:///{tmp_path / 'sweepserve.db'}")
    try:
        assert {"jobs", "trials", "epoch_metrics", "models", "workers"} <= set(
            inspect(engine).get_table_names()
        )
        assert schema_revision(engine) == head_revision()
    finally:
        engine.dispose()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(what: str, probe: Callable[[], T | None], timeout: float) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value is not None:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = _free_port()
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen(
        _sweepserve("serve", "--port", str(port), "--workers", "1"),
        env=_env(tmp_path), cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        yield process, port
    finally:
        if process.poll() is None:  # the test failed midway: take its workers down with it
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        _kill_stray_workers(tmp_path)
        log.close()


def _kill_stray_workers(tmp_path: Path) -> None:
    """Workers that `serve` failed to stop; only those on this test's database (their environment says)."""
    if not (tmp_path / "sweepserve.db").exists():
        return
    for pid in _worker_pids(tmp_path):
        with contextlib.suppress(OSError):  # it may exit between the two calls
            if str(tmp_path).encode() in Path(f"/proc/{pid}/environ").read_bytes():
                os.kill(pid, signal.SIGKILL)


def _healthy(port: int) -> bool | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200 or None
    except httpx.TransportError:
        return None


def _worker_pids(tmp_path: Path) -> set[int]:
    """Pids of the workers registered in the database: a worker that got this far really runs."""
    engine = create_engine(f"sqlite:///{tmp_path / 'sweepserve.db'}")
    try:
        with Session(engine) as session:
            return set(session.scalars(select(Worker.pid)))
    finally:
        engine.dispose()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_serve_answers_restarts_a_killed_worker_and_stops_it_on_sigterm(
    serve: tuple[subprocess.Popen[bytes], int], tmp_path: Path
) -> None:
    process, port = serve
    _wait_for("/healthz", lambda: _healthy(port), timeout=120)
    first = _wait_for("the worker to register", lambda: _worker_pids(tmp_path) or None, timeout=120)
    assert len(first) == 1
    (killed,) = first
    os.kill(killed, signal.SIGKILL)  # a worker this test's `serve` started, by its pid

    pids = _wait_for("a new worker", lambda: (_worker_pids(tmp_path) - first) or None, timeout=120)
    (restarted,) = pids
    assert _alive(restarted) and _healthy(port)

    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 0
    assert not _alive(restarted)
    # The killed worker could not unregister; the restarted one was stopped gracefully and did.
    assert _worker_pids(tmp_path) == {killed}
