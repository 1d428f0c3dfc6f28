"""A cap on every request body, so no route (not only /predict) can be made to buffer gigabytes."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.problems import problem_response

# The client may still be sending the rest of a body we will not read.
CLOSE = {"Connection": "close"}


class BodyLimit:
    """Pure ASGI middleware: 413 when the declared or the streamed body exceeds `limit` bytes.

    The streamed case raises an HTTPException from `receive`, which FastAPI passes through its
    body parsing untouched, so the problem handler answers it like any other 413.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            detail = f"the body is {int(declared)} bytes; at most {self.limit} are accepted"
            return await problem_response(413, "Request too large", detail, CLOSE)(scope, receive, send)
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise HTTPException(413, f"the body exceeds {self.limit} bytes", headers=CLOSE)
            return message

        await self.app(scope, counting_receive, send)


def install_body_limit(app: FastAPI, limit: int) -> None:
    app.add_middleware(BodyLimit, limit=limit)
