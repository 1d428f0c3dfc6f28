"""The ASGI application. Build it with `create_app()` (`uvicorn --factory app.api.main:create_app`);
nothing touches the database before the lifespan starts."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.api.auth import install_key_check, protected
from app.api.limits import install_body_limit
from app.api.problems import install_problem_handlers
from app.api.routes import exports, health, jobs, metrics, models, pages, predict, studies, trials, v2
from app.ops.metrics import build_registry
from app.ops.requests import install_request_middleware
from app.serving.predictor import Predictor
from app.settings import Settings, get_settings
from app.store import db
from app.store.artifacts import open_store


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    db.upgrade_to_head(settings.database_url)
    app.state.engine = engine = db.make_engine(settings.database_url)
    app.state.session_factory = db.session_factory(engine)
    app.state.store = store = open_store(settings)
    app.state.predictor = predictor = Predictor(settings, app.state.session_factory, store)
    await predictor.start()
    # Start-up made hundreds of thousands of long-lived objects (torch, models, routes): out of the
    # collector's sight, a full collection no longer stalls requests (p99 at 32 concurrent /predict
    # clients: 415-590 ms before, 150-180 ms after; see docs/benchmarks.md).
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()  # an app stopped inside a longer-lived process (tests) leaves nothing pinned
        await predictor.stop()
        engine.dispose()


def create_app(settings: Settings | None = None) -> FastAPI:
    # /docs and /redoc are app.api.routes.pages': Swagger UI and ReDoc served from a packaged copy.
    app = FastAPI(title="sweepserve", version="1", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.settings = settings = settings or get_settings()
    install_problem_handlers(app)
    app.include_router(health.router)  # probes stay open when an API key is set
    app.include_router(v2.health)
    routers = (jobs.router, trials.router, exports.router, studies.router, models.router, predict.router)
    routers = (*routers, metrics.router)
    for router in (*routers, v2.router):
        app.include_router(router, **protected())
    pages.install_pages(app)  # the dashboard's pages and static files hold no data: public
    install_body_limit(app, settings.max_body_bytes)
    install_key_check(app, settings.api_key)  # outside the body limit: no key, no reading of the body
    app.state.metrics_registry, http_metrics = build_registry(app)
    install_request_middleware(app, http_metrics)  # the outermost wrapper: every answer has its id
    return app
