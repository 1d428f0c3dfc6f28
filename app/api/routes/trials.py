"""A job's trials: one with its per-epoch history, or every trial's history at once. (Adding and
retrying trials answer with the job: app.api.routes.jobs.)"""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import JobId, SessionDep, TrialId
from app.api.schemas import problem_responses
from app.api.schemas.jobs import EpochOut, TrialDetail
from app.store.jobs import get_trial, job_history

router = APIRouter(prefix="/jobs", tags=["trials"])


@router.get(
    "/{job_id}/trials/{trial_id}",
    response_model=TrialDetail,
    responses=problem_responses(404, 422),
    summary="A trial with its per-epoch history",
)
def read_trial(job_id: JobId, trial_id: TrialId, session: SessionDep) -> TrialDetail:
    return TrialDetail.model_validate(get_trial(session, job_id, trial_id))


@router.get(
    "/{job_id}/history",
    response_model=dict[str, list[EpochOut]],
    responses=problem_responses(404, 422),
    summary="Every trial's per-epoch history at once (trial id -> rows), for learning curves",
)
def read_job_history(job_id: JobId, session: SessionDep) -> dict[str, list[EpochOut]]:
    return {
        str(trial_id): [EpochOut.model_validate(row) for row in rows]
        for trial_id, rows in job_history(session, job_id).items()
    }
