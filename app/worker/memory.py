"""A worker's memory ceiling, and out-of-memory errors told apart from other failures.

An out-of-memory is a property of the trial (its batch size on this worker), not bad luck:
retrying it would only take the worker down again, so the trial fails at once and says why.
`SWEEPSERVE_WORKER_MEMORY_LIMIT_MB` caps the worker's heap (RLIMIT_DATA), so a trial too big for
the machine raises in the allocator instead of drawing the kernel's OOM killer onto the worker.
"""

from __future__ import annotations

import gc
import logging
import resource

import torch

log = logging.getLogger("sweepserve.worker")

# What PyTorch's CPU allocator (under RLIMIT_DATA/RLIMIT_AS), CUDA and cuDNN say when memory runs out.
_MESSAGES = ("out of memory", "can't allocate memory", "cannot allocate memory", "CUDNN_STATUS_ALLOC_FAILED")


def apply_memory_limit(limit_mb: int | None) -> None:
    """Cap this process's data segment (heap and private mappings) at `limit_mb` MiB; None = no cap."""
    if limit_mb is None:
        return
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    limit = limit_mb * 2**20
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    log.info("memory limit: %d MiB of data segment (RLIMIT_DATA)", limit // 2**20)


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(message in text for message in _MESSAGES)


def out_of_memory_error(batch_size: int, device: str) -> str:
    """The trial's error: what ran out and what to change (no allocator internals, no paths)."""
    return (
        f"OutOfMemory: batch_size {batch_size} does not fit in the {device} memory of this worker; "
        "submit a smaller batch_size (the trial is not retried)"
    )


def release_memory() -> None:
    """Give back what the failed step held, so the next trial starts from a clean slate."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
