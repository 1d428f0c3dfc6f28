"""Response bodies of the API. Request bodies are the validated specs of `ml.job` themselves."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from pydantic import BaseModel, Field

from app.api.problems import PROBLEM_JSON


class FieldError(BaseModel):
    field: str = Field(description="dotted path of the offending field, e.g. train.lr or query.cursor")
    message: str
    type: str | None


class ProblemOut(BaseModel):
    """RFC 9457 problem details; extra members depend on the problem."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    errors: list[FieldError] | None = Field(None, description="on 422: one entry per invalid field")


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries documenting problem+json bodies for these statuses."""
    schema = {"$ref": "#/components/schemas/ProblemOut"}
    return {
        status: {
            "model": ProblemOut,
            "content": {PROBLEM_JSON: {"schema": schema}},
            "description": HTTPStatus(status).phrase,
        }
        for status in statuses
    }
