"""The API key: when `SWEEPSERVE_API_KEY` is set, every route but the probes, the pages and the
docs needs `Authorization: Bearer <key>`.

The check runs in an ASGI middleware, before routing and before the body is read: FastAPI parses
and validates a body before route dependencies run, so a dependency alone would answer a
malformed `POST /jobs` without a key with 422 instead of 401. The route dependency stays for the
OpenAPI document (it declares the security scheme) and checks the same way.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.problems import Problem, problem_response
from app.api.schemas import problem_responses

# auto_error=False: a missing header must become our problem body, not FastAPI's plain 401/403.
bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="Required when the server sets SWEEPSERVE_API_KEY: `Authorization: Bearer <key>`.",
)
REALM = "sweepserve"
# Open without a key: probes, the dashboard's pages and assets, the API documentation.
PUBLIC_PATHS = frozenset(
    {"/", "/healthz", "/readyz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
)
PUBLIC_PREFIXES = ("/static/", "/static-offline-docs/", "/ui/", "/v2/health/")


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def authorization_problem(header: str | None, expected: str | None) -> Problem | None:
    """None when the Authorization header satisfies the key (or no key is set), else the 401."""
    if not expected:
        return None
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return _unauthorized("this endpoint needs the header `Authorization: Bearer <api key>`", None)
    if not key_matches(token.strip(), expected):
        return _unauthorized("the API key is not valid", "invalid_token")
    return None


def has_key(request: Request) -> bool:
    """Whether the request may see what needs the key (always true when none is set)."""
    expected = request.app.state.settings.api_key
    return authorization_problem(request.headers.get("authorization"), expected) is None


async def require_api_key(  # async: no I/O, so no worker-thread round trip per request
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> None:
    problem = authorization_problem(request.headers.get("authorization"), request.app.state.settings.api_key)
    if problem is not None:
        raise problem


class KeyCheck:
    """Pure ASGI middleware: a 401 problem before the body is read, for every non-public path."""

    def __init__(self, app: ASGIApp, api_key: str | None) -> None:
        self.app, self.api_key = app, api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.api_key or is_public(scope["path"]):
            return await self.app(scope, receive, send)
        header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        problem = authorization_problem(header, self.api_key)
        if problem is None:
            return await self.app(scope, receive, send)
        headers = problem.headers | {"Connection": "close"}  # the unread body is not wanted
        response = problem_response(problem.status, problem.title, problem.detail, headers)
        await response(scope, receive, send)


def install_key_check(app: FastAPI, api_key: str | None) -> None:
    app.add_middleware(KeyCheck, api_key=api_key)


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
