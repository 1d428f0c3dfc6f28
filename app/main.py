"""The ASGI application. Build it with `create_app()` (`uvicorn --factory app.main:create_app`);
nothing touches the database before the lifespan starts."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app import db
from app.auth import protected
from app.limits import install_body_limit
from app.logs import install_request_ids
from app.metrics import install_metrics
from app.metrics import router as metrics_router
from app.predictor import Predictor
from app.problems import install_problem_handlers
from app.routes import health, jobs, models, predict
from app.routes.dashboard import install_dashboard
from app.settings import Settings, get_settings


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    db.upgrade_to_head(settings.database_url)
    app.state.engine = engine = db.make_engine(settings.database_url)
    app.state.session_factory = db.session_factory(engine)
    app.state.predictor = predictor = Predictor(settings, app.state.session_factory)
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
    app = FastAPI(title="sweepserve", version="1", lifespan=lifespan)
    app.state.settings = settings or get_settings()
    install_problem_handlers(app)
    app.include_router(health.router)  # probes stay open when an API key is set
    for router in (jobs.router, models.router, predict.router, metrics_router):
        app.include_router(router, **protected())
    install_dashboard(app)  # pages and static files public; its JSON route protected
    install_body_limit(app, app.state.settings.max_body_bytes)
    install_metrics(app)
    install_request_ids(app)  # after install_metrics: the outermost wrapper, so metrics lines carry the id
    return app
