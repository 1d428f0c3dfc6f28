"""API key auth: when `settings.api_key` is set, routes need `Authorization: Bearer <key>`.

Routers opt in with `app.include_router(router, **protected())`; /healthz and /readyz (the
health router) do not. The dashboard's HTML, JS and CSS and the API docs stay public because
they hold no data: the page asks for the key once and sends it on every call it makes.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.api.problems import Problem
from app.api.schemas import problem_responses

# auto_error=False: a missing header must become our problem body, not FastAPI's plain 401/403.
bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="Required when the server sets SWEEPSERVE_API_KEY: `Authorization: Bearer <key>`.",
)
REALM = "sweepserve"


async def require_api_key(  # async: no I/O, so no worker-thread round trip per request
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> None:
    expected: str | None = request.app.state.settings.api_key
    if not expected:
        return
    if credentials is None:
        raise _unauthorized("this endpoint needs the header `Authorization: Bearer <api key>`", None)
    if not key_matches(credentials.credentials, expected):
        raise _unauthorized("the API key is not valid", "invalid_token")


def key_matches(given: str, expected: str) -> bool:
    """Constant-time comparison: the time taken says nothing about how much of the key was right."""
    return hmac.compare_digest(given.encode(), expected.encode())


def _unauthorized(detail: str, error: str | None) -> Problem:
    # RFC 6750: the challenge names the error only when a token was presented.
    challenge = f'Bearer realm="{REALM}"' + (f', error="{error}"' if error else "")
    return Problem(401, "Unauthorized", detail, headers={"WWW-Authenticate": challenge})


def protected() -> dict[str, Any]:
    """Keyword arguments for `include_router`: every route of the router needs the key (and says so)."""
    return {"dependencies": [Depends(require_api_key)], "responses": problem_responses(401)}
