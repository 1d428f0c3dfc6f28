"""The lease keeper: a thread that renews the current claim's lease and the worker's heartbeat.

When a renewal finds the claim taken over (LOST) or its job cancelled, it sets the matching event
of the claim's `Watch`; the trainer polls them between batches.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from sqlalchemy import Engine

from app.ops.logs import log_context
from app.store.claims import Claim, Lease, renew_lease
from app.store.workers import touch_worker
from app.worker.retry import DB_UNAVAILABLE, first_line

log = logging.getLogger("sweepserve.worker")


@dataclass(frozen=True)
class Watch:
    """What the lease keeper found about one claim; the trainer polls both."""

    claim: Claim
    lost: threading.Event = field(default_factory=threading.Event)  # taken over: stop, write nothing
    cancelled: threading.Event = field(default_factory=threading.Event)  # a user cancelled the job


class LeaseKeeper(threading.Thread):
    """Renews the current claim's lease and the worker's heartbeat every `interval` seconds."""

    def __init__(self, engine: Engine, worker_id: str, interval: float) -> None:
        super().__init__(name="lease-keeper", daemon=True)
        self.engine, self.worker_id, self.interval = engine, worker_id, interval
        self._watched: Watch | None = None
        self._halt = threading.Event()

    def watch(self, claim: Claim) -> Watch:
        """Keep `claim` alive; the Watch's events say when its lease is lost or a cancel arrives."""
        watched = Watch(claim)
        self._watched = watched  # one assignment: the thread sees the old watch or the new one
        return watched

    def unwatch(self) -> None:
        self._watched = None

    def run(self) -> None:
        with log_context(worker_id=self.worker_id):
            while not self._halt.wait(self.interval):
                self.beat()

    def beat(self) -> None:
        watched = self._watched
        try:
            touch_worker(self.engine, self.worker_id)
            if watched is not None:
                self._renew(watched)
        except DB_UNAVAILABLE as exc:
            # The lease may run out meanwhile; the first renewal that reaches the database says so.
            log.warning("heartbeat: database unavailable (%s)", first_line(exc))

    def _renew(self, watched: Watch) -> None:
        lease = renew_lease(self.engine, watched.claim)
        if lease is Lease.HELD:
            return
        with log_context(job_id=watched.claim.job_id, trial_id=watched.claim.trial_id):
            log.warning("attempt %d: %s; stopping the trial", watched.claim.attempt, lease.value)
        (watched.lost if lease is Lease.LOST else watched.cancelled).set()

    def halt(self, timeout: float | None = None) -> None:
        """Stop renewing; wait up to `timeout` s for a renewal under way (it is a daemon thread:
        one stuck on an unreachable database does not keep the process alive)."""
        self._halt.set()
        self.join(timeout)
