"""/jobs/{id}/optuna: a job as an Optuna study file, for optuna-dashboard and Optuna's tools."""

from __future__ import annotations

import tempfile
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from app.api.deps import JobId, SessionDep
from app.api.schemas import problem_responses
from app.store.adaptive import job_observations
from app.store.jobs import get_job
from ml.adaptive import write_study
from ml.job import JobSpec

router = APIRouter(prefix="/jobs", tags=["jobs"])
SQLITE_MEDIA_TYPE = "application/vnd.sqlite3"


@router.get(
    "/{job_id}/optuna",
    response_class=FileResponse,
    responses={200: {"content": {SQLITE_MEDIA_TYPE: {}}}, **problem_responses(404, 422)},
    summary="The job as an Optuna study (an SQLite file): `optuna-dashboard sqlite:///job-1.optuna.db`",
)
def export_study(job_id: JobId, session: SessionDep) -> FileResponse:
    job = get_job(session, job_id)
    spec = JobSpec.model_validate(job.spec)
    folder = Path(tempfile.mkdtemp(prefix="sweepserve-study-"))
    path = folder / f"job-{job_id}.optuna.db"
    write_study(path, f"job {job_id}: {job.name}", spec.search, job_observations(session, job_id))
    return FileResponse(
        path,
        media_type=SQLITE_MEDIA_TYPE,
        filename=path.name,
        background=BackgroundTask(_remove, folder),
    )


def _remove(folder: Path) -> None:
    for file in folder.iterdir():
        file.unlink()
    folder.rmdir()
