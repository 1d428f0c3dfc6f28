"""The outermost middleware: each request gets an id and is timed once, for its access log line
and for the HTTP metrics alike."""

from __future__ import annotations

import time
from collections.abc import Callable

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.ops.logs import log_access, log_context, request_id_from
from app.ops.metrics import HttpMetrics, route_template


class RequestMiddleware:
    """Sets the request id for the request's log lines and echoes it back; when the response
    ends, writes the access line and counts and times the request by route template."""

    def __init__(self, app: ASGIApp, http: HttpMetrics) -> None:
        self.app, self.http = app, http

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(scope["headers"])
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500  # what the client gets if the app fails before answering
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
            await send(message)

        with log_context(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                seconds = time.perf_counter() - started
                log_access(scope, status, seconds)
                # The router has left the matched route in the scope by now.
                self.http.observe(scope["method"], route_template(scope), status, seconds)


def wrap_outermost(app: FastAPI, middleware: Callable[[ASGIApp], ASGIApp]) -> None:
    """Wrap the whole middleware stack, Starlette's error middleware included.

    `app.add_middleware` would put the middleware inside the error middleware, which answers
    unhandled exceptions with the 500 problem: that response (and its traceback log line)
    would then miss the request id. Call before the app serves its first request.
    """
    if app.middleware_stack is not None:
        raise RuntimeError("the app has already started; wrap it before serving")
    build = app.build_middleware_stack
    app.build_middleware_stack = lambda: middleware(build())  # type: ignore[method-assign]


def install_request_middleware(app: FastAPI, http: HttpMetrics) -> None:
    """Request ids, access lines and HTTP metrics for every request. Install after every other
    middleware, so it wraps them all."""
    wrap_outermost(app, lambda inner: RequestMiddleware(inner, http))
