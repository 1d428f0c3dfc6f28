"""Every error the service answers a request with, and the HTTP status it means.

Raised by the store, the serving code and the routes alike; `app.api.problems` turns any of them
into an RFC 9457 problem with `status`, `title` and the message as `detail`. One home, so the
lower layers never import the API to say "not found".
"""

from __future__ import annotations

import os
import re
from typing import Any, ClassVar

# An absolute path of two or more components, not inside a URL (`http://host/a/b`) and not one of
# the API's own routes (`/jobs/1/trials/2`), which answers may name.
_API_ROOTS = ("jobs", "models", "predict", "v2", "ui", "static", "metrics", "readyz", "healthz", "docs")
_ABSOLUTE_PATH = re.compile(
    r"(?<![\w:/.~-])/(?!(?:" + "|".join(_API_ROOTS) + r")\b)[\w.@+~-]+(?:/[\w.@+~-]*)+"
)


def redact_paths(text: str) -> str:
    """`text` with every absolute filesystem path cut to its last component (`/srv/x/ml/data.py:86`
    becomes `data.py:86`): what an HTTP answer may say. Logs keep the full paths."""
    return _ABSOLUTE_PATH.sub(lambda m: os.path.basename(m.group().rstrip("/")) or "<path>", text)


class ServiceError(Exception):
    """Base class: `status` and `title` say how the API answers; `headers` and `extra` go with it."""

    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal server error"

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.headers = headers or {}
        self.extra = extra


class NotFound(ServiceError, LookupError):
    """No such row."""

    status, title = 404, "Not found"


class Conflict(ServiceError):
    """The request is valid but the row's state forbids it."""

    status, title = 409, "Conflict"


class InvalidTransition(Conflict):
    """A trial status change that `ml.status.TRIAL_TRANSITIONS` does not allow."""


class Unprocessable(ServiceError, ValueError):
    """The body is well formed but its content cannot be used (a bad point, too many epochs)."""

    status, title = 422, "Invalid request"


class Gone(ServiceError):
    """The row is still there but what the request needs was deleted on purpose (retention)."""

    status, title = 410, "Gone"


class ModelArchived(Gone):
    """The job's retention policy archived this model: its row and metrics stay, its weights are
    deleted, so it can be neither served nor promoted."""

    title = "Model archived"


class IdempotencyMismatch(ServiceError, ValueError):
    """An Idempotency-Key was reused with a different body."""

    status, title = 422, "Idempotency-Key reused"


class LeaseLost(ServiceError):
    """This (worker, attempt) no longer holds the trial: its lease expired and it was reclaimed."""

    status, title = 409, "Lease lost"


class NoModel(ServiceError):
    """No model is registered yet, or the active one could not be loaded."""

    status, title = 503, "No model to serve"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"Retry-After": "10"})


class ModelUnavailable(NoModel):
    """A requested model exists but its checkpoint cannot be loaded."""


class Overloaded(ServiceError):
    """The request queue is full; the client should retry after `retry_after` seconds."""

    status, title = 503, "Overloaded"

    def __init__(self, pending: int, limit: int, retry_after: int, unit: str = "images") -> None:
        super().__init__(
            f"{pending} {unit} are already waiting (limit {limit}); retry in {retry_after} s",
            headers={"Retry-After": str(retry_after)},
        )
        self.retry_after = retry_after


class ImageRejected(ServiceError, ValueError):
    """One input cannot be used; `status` is 413, 415 or 422 depending on why."""

    title = "Unusable image"

    def __init__(self, index: int, status: int, reason: str) -> None:
        super().__init__(f"image {index}: {reason}", index=index)
        self.index, self.status, self.reason = index, status, reason  # type: ignore[misc]


class DamagedCheckpoint(Conflict):
    """A registered model's checkpoint file cannot be read (truncated, overwritten, not ours)."""


class ExportUnavailable(ServiceError):
    """The optional packages for this export format are not installed."""

    status, title = 501, "Export format unavailable"


class ArtifactMissing(ServiceError, FileNotFoundError):
    """A checkpoint the database names is not in the artifact store (deleted, or never uploaded)."""

    status, title = 404, "Checkpoint missing"


class ArtifactCorrupt(DamagedCheckpoint):
    """A stored checkpoint's bytes differ from the size or sha256 recorded when it was written:
    truncated or tampered with. It is never loaded (409, like any damaged checkpoint)."""

    title = "Checkpoint failed verification"
