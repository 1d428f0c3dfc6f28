"""RFC 9457 problem details: every 4xx and 5xx is `application/problem+json`."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.errors import ServiceError, redact_paths

PROBLEM_JSON = "application/problem+json"
log = logging.getLogger("sweepserve.api")


class Problem(Exception):
    """Raise from a route to answer with a problem body."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail = status, title, detail
        self.headers = headers or {}
        self.extra = extra


def problem_response(
    status: int, title: str, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    # No filesystem path leaves the process in an answer (a failed load's message, a trial error).
    body = {"type": "about:blank", "title": title, "status": status, "detail": redact_paths(detail)}
    body |= {key: _redacted(value) for key, value in extra.items()}
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redact_paths(value)
    if isinstance(value, dict):
        return {key: _redacted(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_redacted(item) for item in value]
    return value


def _field_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    errors = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        errors.append(
            {"field": ".".join(loc) or "body", "message": err.get("msg", ""), "type": err.get("type")}
        )
    return errors


async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
    errors = _field_errors(exc)
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return problem_response(422, "Invalid request", detail, errors=errors)


async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    return problem_response(exc.status_code, _title(exc.status_code), str(exc.detail), exc.headers)


async def _problem(_: Request, exc: Problem) -> JSONResponse:
    return problem_response(exc.status, exc.title, exc.detail, exc.headers, **exc.extra)


async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
    return problem_response(exc.status, exc.title, str(exc), exc.headers, **exc.extra)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem_response(500, "Internal server error", "an unexpected error occurred; it was logged")


def _title(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http)  # type: ignore[arg-type]
    app.add_exception_handler(Problem, _problem)  # type: ignore[arg-type]
    app.add_exception_handler(ServiceError, _service_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected)
