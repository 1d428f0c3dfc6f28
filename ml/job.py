"""The one validated spec of a job: the body of POST /jobs becomes a `JobSpec`, stored as is and
handed to the trainer unchanged. Validating it expands the search space once (`points`), so a
bad point or too many trials is refused with the rest of the body's errors.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated

from pydantic import Field, PrivateAttr, model_validator

from ml.config import MAX_TRIALS, DataConfig, EarlyStoppingSpec, SearchSpec, Strict, TrainConfig
from ml.search import TrialPoint, expand


class RetentionSpec(Strict):
    """Which checkpoints of the job's finished (succeeded or pruned) trials are kept
    (`app.store.retention`). Failed and cancelled trials keep theirs, for a retry."""

    # best.pt of the k best finished trials by validation accuracy (plus any model that is served,
    # promoted or aliased); the others keep their rows and metrics, their files are deleted and
    # their models archived. None keeps every trial's.
    top_k: Annotated[int, Field(ge=1, le=MAX_TRIALS)] | None = 3
    # last.pt (optimiser and EMA state) of the kept trials: extend then resumes exactly; without
    # it extend continues from best.pt's weights with a fresh optimiser.
    keep_last: bool = False


class StopWhen(Strict):
    """The job's goal: once any trial's validation accuracy reaches it, the job ends: queued
    trials are cancelled, running ones end (succeeded) at their next epoch boundary."""

    val_accuracy: Annotated[float, Field(gt=0, le=1)]


class JobSpec(Strict):
    """The body of POST /jobs, normalised."""

    # No control characters: PostgreSQL text cannot hold NUL, and a name is shown in logs and UIs.
    name: Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]*$")] = "sweep"
    search: SearchSpec = SearchSpec()
    train: TrainConfig = TrainConfig()
    data: DataConfig = DataConfig()
    early_stopping: EarlyStoppingSpec = EarlyStoppingSpec()
    priority: Annotated[int, Field(ge=-1000, le=1000)] = 0  # higher runs first; ties by age
    max_attempts: Annotated[int, Field(ge=1, le=20)] = 3  # claims before a trial is failed
    retention: RetentionSpec = RetentionSpec()
    # trials of this job trained at once, whatever the number of workers; None = unlimited
    max_concurrent_trials: Annotated[int, Field(ge=1, le=MAX_TRIALS)] | None = None
    stop_when: StopWhen | None = None

    _points: list[TrialPoint] = PrivateAttr(default_factory=list)

    @model_validator(mode="after")
    def _budget_or_early_stopping(self) -> JobSpec:
        budgeted = self.train.time_budget_s is not None or "time_budget_s" in self.search.space
        if budgeted and self.early_stopping.strategy != "none":
            # A budget sets a trial's epochs from its measured speed; ASHA's rungs and the median
            # rule compare trials epoch by epoch, which trials of different lengths break.
            raise ValueError(
                "train.time_budget_s and early_stopping cannot be combined: a budget plans each "
                "trial's epochs from its own speed; drop one of them"
            )
        return self

    @model_validator(mode="after")
    def _expand_the_space(self) -> JobSpec:
        self._points = expand(self.search, self.train)  # ValueError names the bad point or the count
        return self

    @property
    def points(self) -> list[TrialPoint]:
        """The trials of the job, in a stable order: one `TrainConfig` per point of the space."""
        return self._points

    def digest(self) -> str:
        """Stable hash of the normalised spec, for Idempotency-Key comparisons."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()
