"""A job's trials: one with its per-epoch history, or every trial's history at once; trials added
to a job, a failed or cancelled trial retried."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import JobId, SessionDep, TrialId
from app.api.schemas import problem_responses
from app.api.schemas.jobs import EpochOut, TrialDetail, TrialOut
from app.api.schemas.steering import AddTrialsIn
from app.store.jobs import get_trial, job_history
from app.store.steering import add_trials, retry_trial

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


@router.post(
    "/{job_id}/trials",
    status_code=202,
    response_model=list[TrialOut],
    responses=problem_responses(404, 409, 422),
    summary="Queue new trials in the job, one per point (a point already in the job is a 409)",
)
def add(job_id: JobId, body: AddTrialsIn, session: SessionDep) -> list[TrialOut]:
    added = add_trials(session, job_id, body.points)
    session.commit()
    return [TrialOut.model_validate(t) for t in added]


@router.post(
    "/{job_id}/trials/{trial_id}/retry",
    status_code=202,
    response_model=TrialOut,
    responses=problem_responses(404, 409, 422),
    summary="Queue a failed or cancelled trial again, from its last checkpoint, with a fresh attempt budget",
)
def retry(job_id: JobId, trial_id: TrialId, session: SessionDep) -> TrialOut:
    trial = retry_trial(session, job_id, trial_id)
    session.commit()
    return TrialOut.model_validate(trial)
