"""The worker's patience with the database, and what it keeps of a failed attempt's exception."""

from __future__ import annotations

import itertools
import logging
import threading
import time
import traceback
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import InterfaceError, OperationalError

log = logging.getLogger("sweepserve.worker")

BACKOFF_FIRST_S = 0.5
BACKOFF_CAP_S = 10.0
DB_UNAVAILABLE = (OperationalError, InterfaceError)  # connection refused/dropped, SQLite busy past timeout
MAX_ERROR_CHARS = 4000

T = TypeVar("T")


def retry_db(action: Callable[[], T], what: str, stop: threading.Event, tries: int | None = None) -> T:
    """Run `action`, retrying while the database is unreachable (backoff capped at BACKOFF_CAP_S).

    Gives up (re-raises) once `stop` is set, so a worker told to exit is not held hostage; with
    `tries`, after that many tries whatever `stop` says (a stopping worker's last write-back).
    """
    delay = BACKOFF_FIRST_S
    for tried in itertools.count(1):
        try:
            return action()
        except DB_UNAVAILABLE as exc:
            if (stop.is_set() and tries is None) or (tries is not None and tried >= tries):
                raise
            log.warning("%s: database unavailable (%s); retrying in %.1f s", what, first_line(exc), delay)
            if stop.is_set():
                time.sleep(delay)
            else:
                stop.wait(delay)
            delay = min(delay * 2, BACKOFF_CAP_S)
    raise AssertionError("unreachable")


def describe_error(exc: BaseException) -> str:
    """Exception type and message, plus where it was raised: what `trials.error` keeps."""
    text = f"{type(exc).__name__}: {exc}"
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        text += f" (at {frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name})"
    return text[:MAX_ERROR_CHARS]


def first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
