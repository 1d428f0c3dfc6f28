"""The ASGI application. Build it with `create_app()` (`uvicorn --factory app.main:create_app`);
nothing touches the database before the lifespan starts."""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app import db
from app.predictor import Predictor
from app.problems import install_problem_handlers
from app.settings import Settings, get_settings

ROUTE_MODULES = ("health", "jobs", "models", "predict")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    db.upgrade_to_head(settings.database_url)
    app.state.engine = engine = db.make_engine(settings.database_url)
    app.state.session_factory = db.session_factory(engine)
    app.state.predictor = predictor = Predictor(settings, app.state.session_factory)
    await predictor.start()
    try:
        yield
    finally:
        await predictor.stop()
        engine.dispose()


def create_app(settings: Settings | None = None) -> FastAPI:
    app = FastAPI(title="sweepserve", version="1", lifespan=lifespan)
    app.state.settings = settings or get_settings()
    install_problem_handlers(app)
    for name in ROUTE_MODULES:
        try:
            module = importlib.import_module(f"app.routes.{name}")
        except ModuleNotFoundError as exc:  # TEMPORARY: models/predict are being written
            if exc.name != f"app.routes.{name}":
                raise
            continue
        app.include_router(module.router)
    return app
