"""`configure_logging` rewires the root logger for the whole process; tests that call it (directly or
through `app.cli.main`) put the previous handlers back, or later tests would log to closed streams."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from app.ops.logs import QUIET_LOGGERS

REWIRED = ("uvicorn", "uvicorn.error", "uvicorn.access", *QUIET_LOGGERS)


@contextmanager
def preserved_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    saved = {name: _state(logging.getLogger(name)) for name in REWIRED}
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, (named_handlers, propagate, disabled, named_level) in saved.items():
            logger = logging.getLogger(name)
            logger.handlers[:] = named_handlers
            logger.propagate, logger.disabled = propagate, disabled
            logger.setLevel(named_level)


def _state(logger: logging.Logger) -> tuple[list[logging.Handler], bool, bool, int]:
    return list(logger.handlers), logger.propagate, logger.disabled, logger.level
