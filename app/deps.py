"""FastAPI dependencies: settings, a database session per request, the predictor."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from app.settings import Settings

if TYPE_CHECKING:
    from app.predictor import Predictor


# async although they only read app.state: FastAPI runs a plain `def` dependency in a worker
# thread, a round trip per request that /predict's latency under load pays for.
async def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.session_factory() as session:
        yield session


async def get_predictor(request: Request) -> Predictor:
    return request.app.state.predictor


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
PredictorDep = Annotated["Predictor", Depends(get_predictor)]
