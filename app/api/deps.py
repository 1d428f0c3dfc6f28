"""FastAPI dependencies (settings, a database session per request, the predictor) and the
path parameters every route spells the same way."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi import Path as PathParam
from sqlalchemy.orm import Session

from app.serving.predictor import Predictor
from app.settings import Settings
from app.store.artifacts import ArtifactStore

# Ids are INTEGER columns (int4 on PostgreSQL): a larger id is a 422, not a database overflow.
MAX_ID = 2**31 - 1


# async although they only read app.state: FastAPI runs a plain `def` dependency in a worker
# thread, a round trip per request that /predict's latency under load pays for.
async def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.session_factory() as session:
        yield session


async def get_store(request: Request) -> ArtifactStore:
    return request.app.state.store


async def get_predictor(request: Request) -> Predictor:
    return request.app.state.predictor


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
PredictorDep = Annotated[Predictor, Depends(get_predictor)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]

JobId = Annotated[int, PathParam(ge=1, le=MAX_ID)]
TrialId = Annotated[int, PathParam(ge=1, le=MAX_ID)]
ModelId = Annotated[int, PathParam(ge=1, le=MAX_ID)]
