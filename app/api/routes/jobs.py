"""/jobs: submit a sweep, follow it, cancel it, delete it. The rules live in app.store.jobs."""

from __future__ import annotations

import base64
from typing import Annotated

from fastapi import APIRouter, Body, Header, Query, Response
from pydantic import BeforeValidator, WithJsonSchema
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.api.deps import MAX_ID, JobId, PredictorDep, SessionDep, StoreDep, TrialId
from app.api.schemas import problem_responses
from app.api.schemas.jobs import (
    JOB_SPEC_EXAMPLE,
    JobOut,
    JobPage,
    JobStatusValue,
    job_out,
    job_summary,
)
from app.api.schemas.steering import ADD_EXAMPLE, EXTEND_EXAMPLE, AddTrialsIn, ExtendIn
from app.store.artifacts import ArtifactStore, job_key
from app.store.jobs import (
    cancel_job,
    delete_job,
    get_job,
    job_eta_seconds,
    list_jobs,
    model_of_trial,
    submit_job,
    trial_counts,
)
from app.store.points import best_point, best_trial_of, job_points
from app.store.registry import record_champion
from app.store.steering import add_trials, extend_trials, retry_trial
from ml.job import JobSpec

CURSOR_PREFIX = b"jobs:"

router = APIRouter(prefix="/jobs", tags=["jobs"])


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
    store: StoreDep,
    response: Response,
    idempotency_key: Annotated[
        str | None,
        Header(min_length=1, max_length=255, description="same key + same body returns the original job"),
    ] = None,
) -> JobOut:
    job_id = _submit(session, spec, idempotency_key)
    response.headers["Location"] = f"/jobs/{job_id}"
    return _job_out(session, store, job_id)


@router.get("", response_model=JobPage, responses=problem_responses(422), summary="Jobs, newest first")
def read_jobs(
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[Cursor | None, Query(description="next_cursor of the previous page")] = None,
    status: Annotated[JobStatusValue | None, Query(description="only jobs in this status")] = None,
) -> JobPage:
    rows, more = list_jobs(session, limit, cursor, status)
    items = [job_summary(row.job, row.counts, row.best_val_accuracy) for row in rows]
    return JobPage(items=items, next_cursor=encode_cursor(rows[-1].job.id) if more else None)


@router.get("/{job_id}", response_model=JobOut, responses=problem_responses(404, 422))
def read_job(job_id: JobId, session: SessionDep, store: StoreDep) -> JobOut:
    return _job_out(session, store, job_id)


@router.post(
    "/{job_id}/cancel",
    status_code=202,
    response_model=JobOut,
    responses=problem_responses(404, 409, 422),
    summary="Cancel queued trials now; running ones stop at their next boundary",
)
def cancel(job_id: JobId, session: SessionDep, store: StoreDep) -> JobOut:
    cancel_job(session, job_id)
    session.commit()
    return _job_out(session, store, job_id)


@router.post(
    "/{job_id}/extend",
    status_code=202,
    response_model=JobOut,
    responses=problem_responses(404, 409, 422),
    summary="Train the best (or chosen) finished trials on to more epochs, from their checkpoints",
)
def extend(
    job_id: JobId,
    body: Annotated[ExtendIn, Body(openapi_examples={"top 2 to 40 epochs": {"value": EXTEND_EXAMPLE}})],
    session: SessionDep,
    store: StoreDep,
) -> JobOut:
    extend_trials(session, job_id, body.epochs, store, top_k=body.top_k, trial_ids=body.trial_ids)
    session.commit()
    return _job_out(session, store, job_id)


@router.post(
    "/{job_id}/trials",
    status_code=202,
    response_model=JobOut,
    responses=problem_responses(404, 409, 422),
    summary="Queue new trials in the job, one per point (a point already in the job is a 409)",
)
def add(
    job_id: JobId,
    body: Annotated[AddTrialsIn, Body(openapi_examples={"two points": {"value": ADD_EXAMPLE}})],
    session: SessionDep,
    store: StoreDep,
) -> JobOut:
    add_trials(session, job_id, body.points)
    session.commit()
    return _job_out(session, store, job_id)


@router.post(
    "/{job_id}/trials/{trial_id}/retry",
    status_code=202,
    response_model=JobOut,
    responses=problem_responses(404, 409, 422),
    summary="Queue a failed or cancelled trial again, from its last checkpoint, with a fresh attempt budget",
)
def retry(job_id: JobId, trial_id: TrialId, session: SessionDep, store: StoreDep) -> JobOut:
    retry_trial(session, job_id, trial_id)
    session.commit()
    return _job_out(session, store, job_id)


@router.delete(
    "/{job_id}",
    status_code=204,
    response_class=Response,
    responses=problem_responses(404, 409, 422),
    summary="Delete a finished job, its trials, models and checkpoint files",
)
def remove_job(job_id: JobId, session: SessionDep, store: StoreDep, predictor: PredictorDep) -> Response:
    model_ids = delete_job(session, job_id)
    if model_ids:
        record_champion(session, f"job {job_id} deleted with models {', '.join(map(str, model_ids))}")
    # Rows first: once they are gone no worker or predictor looks for the files. Ids are never
    # reused (AUTOINCREMENT), so the keys can belong to no later job.
    session.commit()
    predictor.forget(model_ids)  # not served from now on; it switches to the new active model
    store.delete_prefix(job_key(job_id))
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


def _job_out(session: Session, store: ArtifactStore, job_id: int) -> JobOut:
    session.expire_all()  # a commit or a bulk update (cancel) may have left loaded rows stale
    job = get_job(session, job_id)
    points = job_points(job.trials)
    top = best_point(points)
    best = None if top is None else best_trial_of(top)
    model_id = None if best is None else model_of_trial(session, best.id)
    eta = job_eta_seconds(session, job)
    out = job_out(job, trial_counts(session, job_id), points, best, model_id, eta)
    out.disk_bytes = store.usage(job_key(job_id))  # what the job's retention policy keeps
    return out
