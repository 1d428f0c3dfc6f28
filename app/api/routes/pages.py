"""The web dashboard: three pages (jobs, one job, predict) and their JS/CSS from app/api/static.

The pages only read the documented JSON API (the curves: `GET /jobs/{id}/history`, every trial's
epochs in one call instead of one call per trial).
The HTML, JS and CSS hold no data, so they load without the API key; the pages ask for it on
their first 401 (see app/api/static/api.js).
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
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

# Swagger UI and ReDoc as packaged by fastapi-offline: served from this origin (no CDN, so nothing
# from elsewhere runs where the dashboard keeps the API key), and the docs work without a network.
DOCS_ASSETS = Path(fastapi_offline.__file__).resolve().parent / "static"
DOCS_STATIC = "/static-offline-docs"
# Both pages start their UI from an inline script; anything from another origin is refused (ReDoc's
# bundle would fetch its logo from a CDN).
DOCS_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; worker-src 'self' blob:; object-src 'none'; base-uri 'none'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
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


@router.get("/docs")
def swagger_ui() -> HTMLResponse:
    page = get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="sweepserve - Swagger UI",
        swagger_js_url=f"{DOCS_STATIC}/swagger-ui-bundle.js",
        swagger_css_url=f"{DOCS_STATIC}/swagger-ui.css",
        swagger_favicon_url="/static/favicon.svg",
        oauth2_redirect_url=None,
    )
    page.headers.update(DOCS_HEADERS)
    return page


@router.get("/redoc")
def redoc() -> HTMLResponse:
    page = get_redoc_html(
        openapi_url="/openapi.json",
        title="sweepserve - ReDoc",
        redoc_js_url=f"{DOCS_STATIC}/redoc.standalone.js",
        redoc_favicon_url="/static/favicon.svg",
        with_google_fonts=False,
    )
    page.headers.update(DOCS_HEADERS)
    return page


def install_pages(app: FastAPI) -> None:
    """The pages, the API documentation and static files: public, they hold no data."""
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.mount(DOCS_STATIC, StaticFiles(directory=DOCS_ASSETS), name="static-offline-docs")
