"""/jobs: submit a sweep, follow it, cancel it, delete it. The queue rules live in app.queue."""

from __future__ import annotations

import base64
import shutil
from typing import Annotated

from fastapi import APIRouter, Body, Header, Query, Response
from fastapi import Path as PathParam
from pydantic import BeforeValidator, WithJsonSchema
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from app.deps import PredictorDep, SessionDep, SettingsDep
from app.models import Job, RegisteredModel, Trial
from app.queue import Conflict, NotFound, cancel_job, get_job, submit_job, trial_counts
from app.schemas import problem_responses
from app.schemas.jobs import (
    JOB_SPEC_EXAMPLE,
    JobOut,
    JobPage,
    JobStatus,
    TrialDetail,
    best_trial,
    job_out,
    job_summary,
)
from ml.config import JobSpec

# Ids are INTEGER columns (int4 on PostgreSQL): a larger id is a 422, not a database overflow.
MAX_ID = 2**31 - 1
INT64_MAX = MAX_ID  # TEMPORARY old name, still imported by routes/models.py and routes/predict.py
CURSOR_PREFIX = b"jobs:"

router = APIRouter(prefix="/jobs", tags=["jobs"])

JobId = Annotated[int, PathParam(ge=1, le=MAX_ID)]
TrialId = Annotated[int, PathParam(ge=1, le=MAX_ID)]


def encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(CURSOR_PREFIX + str(last_id).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The last id of the previous page. ValueError (a 422 naming `cursor`) for anything we did not issue."""
    last_id = _cursor_id(cursor) if len(cursor) <= 64 else None
    if last_id is None or not 1 <= last_id <= MAX_ID:
        raise ValueError("not a cursor from GET /jobs; pass next_cursor back unchanged")
    return last_id


def _cursor_id(cursor: str) -> int | None:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except ValueError:  # binascii.Error, or non-ASCII text
        return None
    digits = raw.removeprefix(CURSOR_PREFIX)
    return int(digits) if raw.startswith(CURSOR_PREFIX) and digits.isdigit() else None


Cursor = Annotated[int, BeforeValidator(decode_cursor), WithJsonSchema({"type": "string", "maxLength": 64})]


@router.post(
    "",
    status_code=202,
    response_model=JobOut,
    responses=problem_responses(422),
    summary="Submit a sweep: one trial per point of the search space",
)
def create_job(
    spec: Annotated[JobSpec, Body(openapi_examples={"grid": {"value": JOB_SPEC_EXAMPLE}})],
    session: SessionDep,
    response: Response,
    idempotency_key: Annotated[
        str | None,
        Header(min_length=1, max_length=255, description="same key + same body returns the original job"),
    ] = None,
) -> JobOut:
    job_id = _submit(session, spec, idempotency_key)
    response.headers["Location"] = f"/jobs/{job_id}"
    return _job_out(session, job_id)


@router.get("", response_model=JobPage, responses=problem_responses(422), summary="Jobs, newest first")
def list_jobs(
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[Cursor | None, Query(description="next_cursor of the previous page")] = None,
    status: Annotated[JobStatus | None, Query(description="only jobs in this status")] = None,
) -> JobPage:
    query = select(Job).order_by(Job.id.desc()).limit(limit + 1)  # one extra row says "more follow"
    if cursor is not None:
        query = query.where(Job.id < cursor)
    if status is not None:
        query = query.where(Job.status == status)
    jobs = list(session.scalars(query))
    page = jobs[:limit]
    next_cursor = encode_cursor(page[-1].id) if len(jobs) > limit else None
    best = _best_val_accuracies(session, [j.id for j in page])
    items = [job_summary(j, trial_counts(session, j.id), best.get(j.id)) for j in page]
    return JobPage(items=items, next_cursor=next_cursor)


def _best_val_accuracies(session: Session, job_ids: list[int]) -> dict[int, float]:
    rows = session.execute(
        select(Trial.job_id, func.max(Trial.val_accuracy))
        .where(Trial.job_id.in_(job_ids))
        .group_by(Trial.job_id)
    )
    return {job_id: value for job_id, value in rows if value is not None}


@router.get("/{job_id}", response_model=JobOut, responses=problem_responses(404, 422))
def read_job(job_id: JobId, session: SessionDep) -> JobOut:
    return _job_out(session, job_id)


@router.get(
    "/{job_id}/trials/{trial_id}",
    response_model=TrialDetail,
    responses=problem_responses(404, 422),
    summary="A trial with its per-epoch history",
)
def read_trial(job_id: JobId, trial_id: TrialId, session: SessionDep) -> TrialDetail:
    get_job(session, job_id)
    trial = session.scalar(
        select(Trial).where(Trial.id == trial_id, Trial.job_id == job_id).options(selectinload(Trial.history))
    )
    if trial is None:
        raise NotFound(f"trial {trial_id} is not in job {job_id}")
    return TrialDetail.model_validate(trial)


@router.post(
    "/{job_id}/cancel",
    status_code=202,
    response_model=JobOut,
    responses=problem_responses(404, 409, 422),
    summary="Cancel queued trials now; running ones stop at their next boundary",
)
def cancel(job_id: JobId, session: SessionDep) -> JobOut:
    cancel_job(session, job_id)
    session.commit()
    return _job_out(session, job_id)


@router.delete(
    "/{job_id}",
    status_code=204,
    response_class=Response,
    responses=problem_responses(404, 409, 422),
    summary="Delete a finished job, its trials, models and checkpoint files",
)
def remove_job(
    job_id: JobId, session: SessionDep, settings: SettingsDep, predictor: PredictorDep
) -> Response:
    job = get_job(session, job_id)
    if job.status in ("queued", "running"):
        raise Conflict(f"job {job_id} is {job.status}; cancel it first")
    if job.finished_at is None:
        raise Conflict(f"job {job_id} still has trials stopping after its cancellation; retry shortly")
    # Rows first: once they are gone no worker or predictor looks for the files.
    session.execute(delete(Job).where(Job.id == job_id))  # the foreign keys cascade
    session.commit()
    shutil.rmtree(settings.artifacts_dir / "jobs" / str(job_id), ignore_errors=True)
    predictor.request_reload()  # it may be serving one of this job's models: let it switch now
    return Response(status_code=204)


def _submit(session: Session, spec: JobSpec, idempotency_key: str | None) -> int:
    try:
        job, _ = submit_job(session, spec, idempotency_key)
        session.commit()
    except IntegrityError:
        if idempotency_key is None:
            raise
        # A concurrent request with the same key inserted first; answer as its replay would.
        session.rollback()
        job, _ = submit_job(session, spec, idempotency_key)
    return job.id


def _job_out(session: Session, job_id: int) -> JobOut:
    session.expire_all()  # a commit or a bulk update (cancel) may have left loaded rows stale
    job = get_job(session, job_id)
    best = best_trial(job.trials)
    model_id = None
    if best is not None:
        model_id = session.scalar(select(RegisteredModel.id).where(RegisteredModel.trial_id == best.id))
    return job_out(job, trial_counts(session, job_id), best, model_id)
