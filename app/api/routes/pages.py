"""The web dashboard: three pages (jobs, one job, predict) and their JS/CSS from app/api/static.

The pages only read the documented JSON API (the curves: `GET /jobs/{id}/history`, every trial's
epochs in one call instead of one call per trial).
The HTML, JS and CSS hold no data, so they load without the API key; the pages ask for it on
their first 401 (see app/api/static/api.js).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from app.api.deps import JobId

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

router = APIRouter(include_in_schema=False)


def _page(name: str) -> FileResponse:
    return FileResponse(STATIC_DIR / name, media_type="text/html", headers=PAGE_HEADERS)


@router.get("/")
def jobs_page() -> FileResponse:
    return _page("index.html")


@router.get("/ui/jobs/{job_id}")
def job_page(job_id: JobId) -> FileResponse:
    return _page("job.html")  # the script reads the id from the URL and asks the API


@router.get("/ui/predict")
def predict_page() -> FileResponse:
    return _page("predict.html")


def install_pages(app: FastAPI) -> None:
    """The pages and static files: public, they hold no data."""
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
