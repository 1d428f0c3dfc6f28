"""/models: the checkpoints finished trials produced, which one is active, promotion, aliases and
their history, export."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated

from anyio import from_thread
from fastapi import APIRouter, Body, Query, Response
from fastapi.responses import FileResponse
from sqlalchemy.orm import Session
from starlette.background import BackgroundTask

from app.api.deps import ModelId, PredictorDep, SessionDep, StoreDep
from app.api.problems import Problem
from app.api.schemas import problem_responses
from app.api.schemas.models import (
    AliasHistory,
    AliasIn,
    AliasList,
    AliasMoveOut,
    AliasName,
    AliasOut,
    ModelList,
    ModelOut,
)
from app.errors import ArtifactMissing, NotFound
from app.serving.export import MEDIA_TYPES, SUFFIXES, ExportFormat, export_model
from app.serving.predictor import Predictor
from app.store.artifacts import ArtifactStore
from app.store.registry import (
    CHAMPION,
    ModelInfo,
    alias_history,
    aliases_by_model,
    get_model,
    list_aliases,
    list_models,
    promote_model,
    servable_model,
    set_alias,
    unpin_champion,
)
from app.store.tables import ModelAlias, RegisteredModel

router = APIRouter(prefix="/models", tags=["models"])


@router.get("", response_model=ModelList, summary="Registered models, newest first")
def read_models(session: SessionDep, predictor: PredictorDep) -> ModelList:
    serving = _serving(predictor, session)
    names = aliases_by_model(session)
    return ModelList(items=[_model_out(row, serving, names) for row in list_models(session)])


@router.get("/aliases", response_model=AliasList, summary="Every alias and the model it names")
def read_aliases(session: SessionDep, predictor: PredictorDep) -> AliasList:
    serving = _serving(predictor, session)
    items = [AliasOut(name=a.name, model_id=a.model_id, pinned=True) for a in list_aliases(session)]
    items = [item for item in items if item.name != CHAMPION]
    if serving is not None:  # champion is what /predict answers with
        alias = session.get(ModelAlias, CHAMPION)
        pinned = alias is not None and alias.pinned and alias.model_id == serving
        items.insert(0, AliasOut(name=CHAMPION, model_id=serving, pinned=pinned))
    return AliasList(items=items)


@router.put(
    "/aliases/{name}",
    response_model=AliasOut,
    responses=problem_responses(404, 409, 422),
    summary="Point an alias at a model (champion: the same as promoting it)",
)
def put_alias(
    name: AliasName,
    body: Annotated[AliasIn, Body(openapi_examples={"model 1": {"value": {"model_id": 1}}})],
    session: SessionDep,
    store: StoreDep,
    predictor: PredictorDep,
) -> AliasOut:
    if name == CHAMPION:
        _promote(body.model_id, session, store, predictor)
    else:
        get_model(session, body.model_id)
        set_alias(session, name, body.model_id, pinned=True, reason="set by a user")
        session.commit()
    return AliasOut(name=name, model_id=body.model_id, pinned=True)


@router.delete(
    "/aliases/{name}",
    status_code=204,
    response_class=Response,
    responses=problem_responses(404, 422),
    summary="Remove an alias; for champion: back to automatic (the best on validation)",
)
def delete_alias(name: AliasName, session: SessionDep, predictor: PredictorDep) -> Response:
    if name == CHAMPION:
        unpin_champion(session, "unpinned by a user: the best on validation")
        session.commit()
        from_thread.run(predictor.refresh_now)  # answers only once /predict follows
    else:
        if session.get(ModelAlias, name) is None:
            raise NotFound(f"alias {name!r} does not exist")
        set_alias(session, name, None, pinned=True, reason="removed by a user")
        session.commit()
    return Response(status_code=204)


@router.get("/history", response_model=AliasHistory, summary="Every move of every alias, newest first")
def read_history(
    session: SessionDep,
    alias: Annotated[AliasName | None, Query(description="only this alias")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> AliasHistory:
    return AliasHistory(items=[AliasMoveOut.model_validate(m) for m in alias_history(session, alias, limit)])


@router.get("/{model_id}", response_model=ModelOut, responses=problem_responses(404, 422))
def read_model(model_id: ModelId, session: SessionDep, predictor: PredictorDep) -> ModelOut:
    row = get_model(session, model_id)
    return _model_out(row, _serving(predictor, session), aliases_by_model(session))


@router.post(
    "/{model_id}/promote",
    response_model=ModelOut,
    responses=problem_responses(404, 409, 422),
    summary="Pin champion (what /predict serves) to this model; it switches without a restart",
)
def promote(model_id: ModelId, session: SessionDep, store: StoreDep, predictor: PredictorDep) -> ModelOut:
    _promote(model_id, session, store, predictor)
    return _model_out(get_model(session, model_id), _serving(predictor, session), aliases_by_model(session))


def _promote(model_id: int, session: Session, store: ArtifactStore, predictor: Predictor) -> None:
    """Load the model first (a model that cannot be served is a 409 and moves nothing), then pin
    champion to it, and answer once /predict serves it."""
    info = ModelInfo.from_row(servable_model(session, model_id, store))
    session.rollback()  # no transaction held open while the model loads
    from_thread.run(predictor.preload, info)
    promote_model(session, model_id, store)
    session.commit()
    from_thread.run(predictor.refresh_now)


def _serving(predictor: Predictor, session: Session) -> int | None:
    """The id /predict answers with now, after looking at the registry (read-your-writes).

    The request's transaction ends first: the predictor reads the registry on its own thread and
    connection, and on SQLite (every transaction there is BEGIN IMMEDIATE) an open one here would
    hold the lock it waits for."""
    session.commit()
    from_thread.run(predictor.refresh_now)
    return predictor.status()["model_id"]


@router.get(
    "/{model_id}/export",
    response_class=FileResponse,
    responses={
        200: {"content": {media: {} for media in set(MEDIA_TYPES.values())}, "description": "the model file"},
        **problem_responses(404, 409, 422, 501),
    },
    summary="Download the model: ONNX or TorchScript (uint8 RGB NCHW in, normalised inside), or state_dict",
)
def export(
    model_id: ModelId,
    session: SessionDep,
    store: StoreDep,
    format: Annotated[ExportFormat, Query(description="file format")] = "onnx",
) -> FileResponse:
    row = get_model(session, model_id)
    try:
        checkpoint = store.get(ModelInfo.from_row(row).blob)  # verified; downloaded if remote
    except ArtifactMissing as exc:
        raise Problem(
            404, "Checkpoint missing", f"model {model_id}'s file {row.path} no longer exists"
        ) from exc
    path = _export_to_temp(checkpoint, format)
    return FileResponse(
        path,
        media_type=MEDIA_TYPES[format],
        filename=f"model-{model_id}{SUFFIXES[format]}",
        background=BackgroundTask(os.unlink, path),
    )


def _export_to_temp(checkpoint: Path, fmt: ExportFormat) -> Path:
    # A temp file, not memory: the response streams it and the background task deletes it.
    fd, name = tempfile.mkstemp(prefix="sweepserve-export-", suffix=SUFFIXES[fmt])
    try:
        with os.fdopen(fd, "wb") as out:
            export_model(checkpoint, fmt, out)
    except BaseException:  # ExportUnavailable is answered 501 by the problem handlers
        os.unlink(name)
        raise
    return Path(name)


def _model_out(row: RegisteredModel, serving: int | None, names: dict[int, list[str]]) -> ModelOut:
    columns = {
        name: getattr(row, name) for name in ModelOut.model_fields if name not in ("active", "aliases")
    }
    aliases = [name for name in names.get(row.id, []) if name != CHAMPION or row.id == serving]
    if row.id == serving and CHAMPION not in aliases:
        aliases.insert(0, CHAMPION)
    return ModelOut.model_validate({**columns, "active": row.id == serving, "aliases": aliases})
