"""/models: the checkpoints finished trials produced, which one is active, promotion, export."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from app.api.deps import ModelId, PredictorDep, SessionDep, StoreDep
from app.api.problems import Problem
from app.api.schemas import problem_responses
from app.api.schemas.models import ModelList, ModelOut
from app.errors import ArtifactMissing
from app.serving.export import MEDIA_TYPES, SUFFIXES, ExportFormat, export_model
from app.store.registry import ModelInfo, active_model, get_model, list_models, promote_model
from app.store.tables import RegisteredModel

router = APIRouter(prefix="/models", tags=["models"])


@router.get("", response_model=ModelList, summary="Registered models, newest first")
def read_models(session: SessionDep) -> ModelList:
    active = active_model(session)
    return ModelList(items=[_model_out(row, active) for row in list_models(session)])


@router.get("/{model_id}", response_model=ModelOut, responses=problem_responses(404, 422))
def read_model(model_id: ModelId, session: SessionDep) -> ModelOut:
    return _model_out(get_model(session, model_id), active_model(session))


@router.post(
    "/{model_id}/promote",
    response_model=ModelOut,
    responses=problem_responses(404, 409, 422),
    summary="Make this model the one /predict serves; it switches without a restart",
)
def promote(model_id: ModelId, session: SessionDep, store: StoreDep, predictor: PredictorDep) -> ModelOut:
    with session.begin():
        promote_model(session, model_id, store)
    predictor.request_reload()
    return _model_out(get_model(session, model_id), active_model(session))


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


def _model_out(row: RegisteredModel, active: RegisteredModel | None) -> ModelOut:
    columns = {name: getattr(row, name) for name in ModelOut.model_fields if name != "active"}
    return ModelOut.model_validate({**columns, "active": active is not None and row.id == active.id})
