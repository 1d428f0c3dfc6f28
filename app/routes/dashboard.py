"""The web dashboard: three pages (jobs, one job, predict) and their JS/CSS from app/static.

The pages only read the documented JSON API, plus `GET /jobs/{id}/history` (here, because only
the curves need it): every trial's epochs in one call instead of one call per trial.
The HTML, JS and CSS hold no data, so they load without the API key; the pages ask for it on
their first 401 (see app/static/api.js).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy import select

from app.auth import protected
from app.deps import SessionDep
from app.models import EpochMetric, Trial
from app.queue import get_job
from app.routes.jobs import JobId
from app.schemas import problem_responses
from app.schemas.jobs import EpochOut

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
# Everything the pages load comes from this origin; user text can never run as script.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}

pages = APIRouter(include_in_schema=False)
router = APIRouter(prefix="/jobs", tags=["dashboard"])


def _page(name: str) -> FileResponse:
    return FileResponse(STATIC_DIR / name, media_type="text/html", headers=PAGE_HEADERS)


@pages.get("/")
def jobs_page() -> FileResponse:
    return _page("index.html")


@pages.get("/ui/jobs/{job_id}")
def job_page(job_id: JobId) -> FileResponse:
    return _page("job.html")  # the script reads the id from the URL and asks the API


@pages.get("/ui/predict")
def predict_page() -> FileResponse:
    return _page("predict.html")


@router.get(
    "/{job_id}/history",
    response_model=dict[str, list[EpochOut]],
    responses=problem_responses(404, 422),
    summary="Every trial's per-epoch history at once (trial id -> rows), for learning curves",
)
def job_history(job_id: JobId, session: SessionDep) -> dict[str, list[EpochOut]]:
    get_job(session, job_id)
    trial_ids = session.scalars(select(Trial.id).where(Trial.job_id == job_id).order_by(Trial.index))
    history: dict[str, list[EpochOut]] = {str(trial_id): [] for trial_id in trial_ids}
    rows = session.scalars(
        select(EpochMetric)
        .join(Trial, Trial.id == EpochMetric.trial_id)
        .where(Trial.job_id == job_id)
        .order_by(EpochMetric.trial_id, EpochMetric.epoch)
    )
    for row in rows:
        history[str(row.trial_id)].append(EpochOut.model_validate(row))
    return history


def install_dashboard(app: FastAPI) -> None:
    """The pages and static files (public) and the history endpoint (behind the API key, if set)."""
    app.include_router(pages)
    app.include_router(router, **protected())
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
