"""Probes: /healthz says the process answers; /readyz that it can serve (database and schema)."""

from __future__ import annotations

import functools
from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy.exc import SQLAlchemyError

from app.api.auth import has_key
from app.api.deps import PredictorDep
from app.api.problems import Problem
from app.api.schemas import problem_responses
from app.errors import redact_paths
from app.store.db import head_revision, schema_revision

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is up")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Ready to serve: database reachable, schema at head; reports the model state",
    responses=problem_responses(503),
)
def readyz(request: Request, predictor: PredictorDep) -> dict[str, Any]:
    # No model yet does not make the service unready: jobs must be submittable to produce one.
    # The probe answers anyone; its details (revisions, the model's state) only holders of the key.
    model = predictor.status()
    if model["last_error"]:  # a failed load names its file: no path leaves in an answer
        model["last_error"] = redact_paths(model["last_error"])
    checks: dict[str, Any] = {**schema_check(request), "model": model}
    details = {"checks": checks} if has_key(request) else {}
    if checks["database"] != "ok" or checks["schema"] != "at head":
        raise Problem(503, "Not ready", _reason(checks), **details)
    return {"status": "ready", **details}


@functools.cache
def _head() -> str:
    return head_revision()  # the code's newest migration: fixed for the life of the process


def schema_check(request: Request) -> dict[str, Any]:
    head = _head()
    try:
        current = schema_revision(request.app.state.engine)
    except SQLAlchemyError as exc:
        return {"database": f"unreachable: {type(exc).__name__}", "schema": "unknown", "head": head}
    schema = "at head" if current == head else f"at {current or 'nothing'}"
    return {"database": "ok", "schema": schema, "revision": current, "head": head}


def _reason(checks: dict[str, Any]) -> str:
    if checks["database"] != "ok":
        return f"the database is {checks['database']}"
    return f"the schema is {checks['schema']}, not at {checks['head']}; run `sweepserve migrate`"
