"""`sweepserve serve`: the API plus local worker processes, kept alive by a supervisor."""

from __future__ import annotations

import argparse
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType

from app.cli.args import gpu_list, worker_count
from app.settings import Settings

log = logging.getLogger("sweepserve.cli")

RESTART_FIRST_S = 1.0  # delay before restarting a worker that died
RESTART_CAP_S = 60.0  # the delay doubles with each quick death up to this
STABLE_AFTER_S = 60.0  # a worker that ran this long before dying restarts after RESTART_FIRST_S again
WATCH_EVERY_S = 0.5
STOP_GRACE_S = 20.0  # SIGTERM makes a worker stop at once; SIGKILL after this anyway


def split_gpus(gpus: list[int] | None, workers: int) -> list[list[int] | None]:
    """The GPUs each of `workers` local workers trains on: contiguous, near-equal groups
    ([0,1,2,3] for 2 workers: [0,1] and [2,3]); with more workers than GPUs, they share round-robin.
    None (all visible GPUs, or the CPU) for every worker when no GPUs are named."""
    if not gpus or workers == 0:
        return [gpus] * workers
    if workers > len(gpus):
        return [[gpus[i % len(gpus)]] for i in range(workers)]
    size, extra = divmod(len(gpus), workers)
    bounds = [i * size + min(i, extra) for i in range(workers + 1)]
    return [gpus[bounds[i] : bounds[i + 1]] for i in range(workers)]


def next_restart(quick_deaths: int, ran: float) -> tuple[int, float]:
    """(quick deaths in a row, seconds to wait) after a worker that ran `ran` seconds exited."""
    deaths = 0 if ran >= STABLE_AFTER_S else quick_deaths + 1
    return deaths, min(RESTART_CAP_S, RESTART_FIRST_S * 2 ** max(0, deaths - 1))


@dataclass
class _Slot:
    command: list[str]
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    quick_deaths: int = 0
    restart_at: float | None = None  # set when a death has been noticed


class WorkerSupervisor:
    """Keeps one process per command alive. A process that exits is restarted after a delay that
    doubles with each quick death (1 s, 2 s, ... 60 s), so a worker that cannot start does not spin."""

    def __init__(self, commands: Sequence[list[str]]) -> None:
        self._slots = [_Slot(list(command)) for command in commands]
        self._stopping = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="worker-supervisor", daemon=True)

    def start(self) -> None:
        for slot in self._slots:
            self._spawn(slot)
        self._watcher.start()

    def stop(self, grace: float = STOP_GRACE_S) -> None:
        """SIGTERM every worker, SIGKILL those still running after `grace` seconds."""
        self._stopping.set()
        if self._watcher.is_alive():
            self._watcher.join()
        running = [s.process for s in self._slots if s.process is not None and s.process.poll() is None]
        for process in running:
            process.terminate()
        deadline = time.monotonic() + grace
        for process in running:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker pid %d did not stop within %.0f s; killing it", process.pid, grace)
                process.kill()
                process.wait()

    def _watch(self) -> None:
        while not self._stopping.wait(WATCH_EVERY_S):
            for slot in self._slots:
                self._check(slot, time.monotonic())

    def _check(self, slot: _Slot, now: float) -> None:
        if slot.process is None or slot.process.poll() is None:
            return
        if slot.restart_at is None:
            ran = now - slot.started_at
            slot.quick_deaths, delay = next_restart(slot.quick_deaths, ran)
            slot.restart_at = now + delay
            log.warning(
                "worker pid %d exited with code %s after %.1f s; restarting it in %.0f s",
                slot.process.pid,
                slot.process.returncode,
                ran,
                delay,
            )
        elif now >= slot.restart_at:
            self._spawn(slot)

    def _spawn(self, slot: _Slot) -> None:
        slot.process = subprocess.Popen(slot.command)
        slot.started_at, slot.restart_at = time.monotonic(), None
        log.info("started worker pid %d: %s", slot.process.pid, " ".join(slot.command[1:]))


def worker_command(gpus: list[int] | None) -> list[str]:
    """The `sweepserve worker` command line for one local worker (same interpreter, same settings)."""
    command = [sys.executable, "-m", "app.cli", "worker"]
    return command if gpus is None else [*command, "--gpus", ",".join(map(str, gpus))]


def add_serve(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--workers", type=worker_count, default=1, help="local worker processes (default 1; 0 = API only)"
    )
    parser.add_argument(
        "--gpus", type=gpu_list, default=None, help="CUDA ids shared out to the workers, e.g. 0,1"
    )


class _ShutdownSignal(Exception):
    """SIGTERM or SIGINT reached the main thread (uvicorn re-raises the one that stopped it)."""


def _raise_shutdown(signum: int, _frame: FrameType | None) -> None:
    raise _ShutdownSignal(signum)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    """Migrate, start the local workers, serve the API until SIGTERM/SIGINT, then stop the workers."""
    import uvicorn

    from app.api.main import create_app
    from app.store.db import upgrade_to_head

    upgrade_to_head(settings.database_url)  # before the workers, which need the schema too
    supervisor = WorkerSupervisor([worker_command(g) for g in split_gpus(args.gpus, args.workers)])
    # Our handlers: without them, the SIGTERM uvicorn re-raises after its graceful shutdown would
    # kill this process before the workers are stopped.
    previous = {sig: signal.signal(sig, _raise_shutdown) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        supervisor.start()
        uvicorn.run(create_app(settings), host=args.host, port=args.port, log_config=None)
    except _ShutdownSignal:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        supervisor.stop()
    return 0
