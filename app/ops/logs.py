"""Logging: plain or JSON lines, with the request id (API) or the job and trial ids (worker) on each line.

The ids live in a context variable, so every log call made while serving a request, or inside
`log_context(job_id=..., trial_id=...)` in the worker, carries them without being passed around.
Threads started with `threading.Thread` do not inherit context variables: wrap their target in
`log_context` too (`asyncio.to_thread` copies the context, so it needs nothing).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from app.settings import Settings

if TYPE_CHECKING:  # the CLI imports this module; Starlette is only needed by the server
    from starlette.types import Scope

REQUEST_ID_HEADER = "X-Request-ID"
# An incoming id is reused only when it cannot forge log lines or headers: no spaces, no control characters.
SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}")
CONTEXT_FIELDS = ("request_id", "job_id", "trial_id", "worker_id")
QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
QUIET_LOGGERS = ("httpx", "httpcore", "alembic")  # alembic says "Context impl SQLiteImpl" on every start

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_log_fields: ContextVar[Mapping[str, Any]] = ContextVar("sweepserve_log_fields", default=_EMPTY)
access_log = logging.getLogger("sweepserve.access")


# --- context ---------------------------------------------------------------------------------


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Put these fields (e.g. job_id=3, trial_id=7) on every log line written inside the block."""
    token = _log_fields.set(MappingProxyType({**_log_fields.get(), **fields}))
    try:
        yield
    finally:
        _log_fields.reset(token)


class ContextFilter(logging.Filter):
    """Copies the context fields onto each record, so formatters (and handlers of others) can use them."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = {k: v for k, v in _log_fields.get().items() if v is not None}
        record.log_fields = fields
        for name in CONTEXT_FIELDS:
            setattr(record, name, fields.get(name))
        record.context = " ".join(f"{k}={v}" for k, v in fields.items())
        return True


# --- formatting ------------------------------------------------------------------------------


class JsonFormatter(logging.Formatter):
    """One JSON object per line; context fields appear only when set."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "log_fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class PlainFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = getattr(record, "context", "")
        if not context:
            return line
        # Context after the message's first line, so a traceback still starts on its own line.
        first, sep, rest = line.partition("\n")
        return f"{first} [{context}]{sep}{rest}"


def configure_logging(settings: Settings, stream: Any = None) -> None:
    """Route every logger (uvicorn's included) through one handler on the root logger.

    Call once per process, before starting uvicorn with `log_config=None`.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.log_json else PlainFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
    # Our access line has the request id and latency; uvicorn's would only repeat it without them.
    logging.getLogger("uvicorn.access").disabled = True
    for chatty in QUIET_LOGGERS:  # one INFO line per CLI request, per Alembic plugin loaded
        logging.getLogger(chatty).setLevel(max(logging.WARNING, root.level))


# --- request ids -----------------------------------------------------------------------------


def request_id_from(headers: list[tuple[bytes, bytes]]) -> str:
    """The client's X-Request-ID when it is sane, else a fresh one."""
    for name, value in headers:
        if name.lower() == b"x-request-id":
            candidate = value.decode("latin-1")
            if SANE_REQUEST_ID.fullmatch(candidate):
                return candidate
            break
    return uuid.uuid4().hex


def log_access(scope: Scope, status: int, seconds: float) -> None:
    """One line per request: method, path with query, status and milliseconds."""
    query = scope.get("query_string", b"").decode("latin-1")
    path = scope["path"] + (f"?{query}" if query else "")
    level = logging.ERROR if status >= 500 else logging.INFO
    if status == 503:
        level = logging.WARNING  # not ready, overloaded or no model yet: states, not faults
    if status < 400 and scope["path"] in QUIET_PATHS:
        level = logging.DEBUG  # probes and scrapes every few seconds would drown the rest
    access_log.log(level, "%s %s %d %.1f ms", scope["method"], path, status, seconds * 1000)
