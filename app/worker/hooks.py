"""The one seam between ml/ and app/: the trainer's `TrialHooks`, answered from the database.

After every epoch (and once at resume) the epochs are written back under the lease guard and the
job's early-stopping rule decides, in the same transaction, whether the trial goes on.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from sqlalchemy.orm import Session

from app.errors import LeaseLost
from app.store.checkpoints import record_checkpoints
from app.store.claims import Claim, goal_reached, record_epochs, record_plan, restore_epochs, siblings
from app.worker.files import TrialFiles
from app.worker.lease import Watch
from ml import early_stopping
from ml.config import EarlyStoppingSpec, TrainConfig
from ml.engine import EpochMetrics, TrialHooks
from ml.job import JobSpec
from ml.plan import Plan
from ml.status import Decision

log = logging.getLogger("sweepserve.worker")

T = TypeVar("T")
Transact = Callable[[Callable[[Session], Any], str], Any]  # run an action in a transaction, with retries


def decide(
    session: Session,
    claim: Claim,
    rule: EarlyStoppingSpec,
    history: Sequence[EpochMetrics],
    *,
    may_wait: bool = True,
) -> Decision:
    """What the job's early-stopping rule makes of this trial after its latest epoch: go on,
    PRUNE, or (ASHA) PAUSE while other trials of the job have still to reach this epoch; first,
    COMPLETE once the job's `stop_when` goal is reached (by this trial or another).

    Runs inside the epoch's guarded transaction and reads the job's other trials in one query.
    A trial that has just trained its last epoch is finished, never pruned; one a user extended is
    trained to the end (the user chose it over the rule). `may_wait` is False
    when the trial resumes from a pause: it has waited at this rung once already.
    """
    goal = claim.job_spec.get("stop_when")  # the validated JobSpec's, as stored
    mine_latest = history[-1].val_accuracy if history else None
    if goal and not claim.extended and goal_reached(session, claim, goal["val_accuracy"], mine_latest):
        return Decision.COMPLETE
    max_epochs = int(claim.config["epochs"])
    if rule.strategy == "none" or len(history) >= max_epochs or claim.extended:
        return Decision.CONTINUE
    others = siblings(session, claim)
    waiting_for = may_wait and any(s.still_to_reach(len(history)) for s in others)
    mine = [m.val_accuracy for m in history]
    return early_stopping.decide(rule, mine, [s.curve for s in others], max_epochs, may_wait=waiting_for)


class WorkerHooks(TrialHooks):
    """The trainer's callbacks: every epoch becomes a guarded database write."""

    def __init__(
        self, transact: Transact, stop: threading.Event, spec: JobSpec, watch: Watch, files: TrialFiles
    ) -> None:
        self.transact, self.stop = transact, stop
        self.spec, self.watch, self.files = spec, watch, files
        self.claim = watch.claim

    def restored(self, history: list[EpochMetrics]) -> Decision:
        def write(session: Session) -> Decision:
            if restore_epochs(session, self.claim, [m.as_dict() for m in history]):
                return Decision.CANCEL
            return decide(session, self.claim, self.spec.early_stopping, history, may_wait=False)

        decision = self._write(write, "restore history")
        self.files.recorded({})
        log.info("resumed after epoch %d -> %s", len(history), decision.value)
        return decision

    def epoch_end(self, metrics: EpochMetrics, history: list[EpochMetrics]) -> Decision:
        uploaded = self.files.publish(history)  # object storage: before the rows name them

        def write(session: Session) -> Decision:
            cancel = record_epochs(session, self.claim, [m.as_dict() for m in history])  # guarded
            record_checkpoints(session, self.claim, metrics.epoch, uploaded)
            if cancel:
                return Decision.CANCEL
            return decide(session, self.claim, self.spec.early_stopping, history)

        decision = self._write(write, f"epoch {metrics.epoch}")
        # The database just confirmed this attempt holds the trial and has its own last.pt.
        self.files.recorded(uploaded)
        log.info("epoch %d: val accuracy %.4f -> %s", metrics.epoch, metrics.val_accuracy, decision.value)
        return decision

    def planned(self, plan: Plan, cfg: TrainConfig) -> None:
        self._write(lambda session: record_plan(session, self.claim, plan.as_dict(), cfg.epochs), "plan")
        log.info("planned %d epochs x %d images, batch %d", plan.epochs, plan.epoch_images, plan.batch_size)

    def should_stop(self) -> bool:
        return self.watch.lost.is_set() or self.watch.cancelled.is_set() or self.stop.is_set()

    def _write(self, action: Callable[[Session], T], what: str) -> T:
        try:
            return self.transact(action, what)
        except LeaseLost:
            self.watch.lost.set()
            raise
