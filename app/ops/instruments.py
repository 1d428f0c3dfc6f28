"""Per-process instruments of the serving code: batch sizes and model reloads.

Apart from `app.ops.metrics` (which reads the database at scrape time), so that serving code can
count without importing the store; `app.ops.metrics` registers these in each app's registry.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

# Per process, not per app: the serving code calls these without a handle on the app.
PREDICT_BATCH_SIZE = Histogram(
    "sweepserve_predict_batch_size",
    "Images per forward pass of /predict's dynamic batcher",
    buckets=BATCH_SIZE_BUCKETS,
    registry=None,
)
MODEL_RELOADS = Counter(
    "sweepserve_model_reloads", "Times /predict switched to another active model", registry=None
)


def observe_batch(size: int) -> None:
    """Record one forward pass of `size` images (call from the batcher)."""
    PREDICT_BATCH_SIZE.observe(size)


def count_reload() -> None:
    """Record that the active model was swapped (call from the predictor)."""
    MODEL_RELOADS.inc()
