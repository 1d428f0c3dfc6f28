"""The words the trainer and the queue share for where a trial (and a job) stands.

`TrialStatus` is the one trial status: the `trials.status` column (the database refuses any
other value), the API's `status` fields, and how `ml.train.run_trial` says a trial ended.
`Decision` is what the trainer's hooks answer at an epoch boundary; `status_after` is the one
rule that turns the decision that ended a run into the trial's status.

Trial status:
    queued     waiting for a worker; also a trial paused at an ASHA rung (`pauses` > 0), which
               resumes from its last.pt once the job's other trials have reached that rung
    running    claimed by a worker for one attempt, under a lease
    succeeded  trained all epochs
    failed     raised, or lost its lease, `max_attempts` times (preemptions by SIGTERM do not count)
    pruned     stopped early by the job's early-stopping rule; keeps curve and checkpoint
    cancelled  cancelled by a user

Job status:
    queued     no trial has been claimed yet
    running    at least one trial claimed, not all trials finished
    succeeded  every trial finished and at least one succeeded
    failed     every trial finished and none succeeded
    cancelled  cancelled by a user; queued trials were cancelled, running ones stop at a boundary
"""

from __future__ import annotations

import enum


class TrialStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    PRUNED = "pruned"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        """No worker will train it again."""
        return self not in ACTIVE

    def may_become(self, new: TrialStatus) -> bool:
        return new in TRIAL_TRANSITIONS[self]


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def active(self) -> bool:
        """Trials of the job may still be claimed or are being trained."""
        return self in (JobStatus.QUEUED, JobStatus.RUNNING)


ACTIVE = frozenset({TrialStatus.QUEUED, TrialStatus.RUNNING})
FINISHED = tuple(s for s in TrialStatus if s not in ACTIVE)
# How an attempt that trained to an end (not one that raised) is written back.
ENDINGS = (TrialStatus.SUCCEEDED, TrialStatus.PRUNED, TrialStatus.CANCELLED)

# Every change of a trial's status; the queue refuses any other (see app.store.claims).
TRIAL_TRANSITIONS: dict[TrialStatus, tuple[TrialStatus, ...]] = {
    TrialStatus.QUEUED: (TrialStatus.RUNNING, TrialStatus.CANCELLED),
    TrialStatus.RUNNING: (
        TrialStatus.RUNNING,  # re-claimed after its lease expired
        TrialStatus.QUEUED,  # failed with attempts left, or paused at an ASHA rung
        TrialStatus.SUCCEEDED,
        TrialStatus.FAILED,
        TrialStatus.PRUNED,
        TrialStatus.CANCELLED,
    ),
    # A user steering the job (app.store.steering): extend a succeeded or pruned trial, retry a
    # failed or cancelled one.
    TrialStatus.SUCCEEDED: (TrialStatus.QUEUED,),
    TrialStatus.FAILED: (TrialStatus.QUEUED,),
    TrialStatus.PRUNED: (TrialStatus.QUEUED,),
    TrialStatus.CANCELLED: (TrialStatus.QUEUED,),
}


class Decision(enum.Enum):
    """The hooks' answer at an epoch boundary (`ml.engine.TrialHooks`), and early stopping's."""

    CONTINUE = "continue"
    PRUNE = "prune"  # stop for good; the best epoch is tested
    PAUSE = "pause"  # stop for now, untested: last.pt holds the state to resume from later
    CANCEL = "cancel"  # a user cancelled the job
    COMPLETE = "complete"  # the job reached its stop_when goal: end now, as succeeded (best epoch tested)


def status_after(decision: Decision) -> TrialStatus:
    """The status of a trial whose run ended with `decision` (CONTINUE: it trained every epoch).
    A paused trial goes back to the queue."""
    return {
        Decision.CONTINUE: TrialStatus.SUCCEEDED,
        Decision.PRUNE: TrialStatus.PRUNED,
        Decision.PAUSE: TrialStatus.QUEUED,
        Decision.CANCEL: TrialStatus.CANCELLED,
        Decision.COMPLETE: TrialStatus.SUCCEEDED,
    }[decision]
