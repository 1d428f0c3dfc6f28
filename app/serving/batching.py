"""Dynamic batching: single images from concurrent requests become one forward pass per model.

One asyncio task gathers queued images (up to `max_batch_size`, waiting at most `max_delay_s`
after the oldest one arrived, and only while other requests are still decoding: a lone request
never waits) and hands the batch to a single inference thread; while that thread computes, new
requests queue up and form the next batch. The queue is bounded: a request
that would overflow it is refused at once (`Overloaded`), so latency cannot grow without limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from app.errors import Overloaded
from app.ops.instruments import observe_batch
from app.serving.inference import LoadedModel, predict_proba

log = logging.getLogger("sweepserve.predictor")


@dataclass
class _Item:
    model: LoadedModel
    image: np.ndarray  # 32 x 32 x 3 uint8
    tta: bool
    enqueued_at: float
    future: asyncio.Future[np.ndarray] = field(repr=False)


class DynamicBatcher:
    def __init__(self, max_batch_size: int, max_delay_s: float, max_queue: int, threads: int = 0) -> None:
        self.max_batch_size, self.max_delay_s, self.max_queue = max_batch_size, max_delay_s, max_queue
        self.forward_passes = 0  # batches run so far: one per (model, tta) in each gathered batch
        self.images_done = 0
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(
            1,
            thread_name_prefix="inference",
            initializer=torch.set_num_threads,
            initargs=(_threads(threads),),
        )
        self._task: asyncio.Task[None] | None = None
        self._seconds_per_image = 0.005  # running estimate, for Retry-After
        self._arriving = 0  # images of requests still decoding: worth waiting for
        self._in_flight: list[_Item] = []  # the batch the inference thread is computing

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    @contextlib.contextmanager
    def arriving(self, count: int) -> Iterator[None]:
        """Wrap the decoding of `count` images that will be submitted right after the block.

        They count against the queue bound from now on, before they are decoded: a flood of
        requests is refused (`Overloaded`) without paying for its decoding first."""
        if self.pending + self._arriving + count > self.max_queue:
            raise Overloaded(self.pending + self._arriving, self.max_queue, self._retry_after())
        self._arriving += count
        try:
            yield
        finally:
            self._arriving -= count

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="dynamic-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=True)
        while not self._queue.empty():
            self._in_flight.append(self._queue.get_nowait())
        for item in self._in_flight:  # no request is left waiting for an answer that will not come
            item.future.cancel()

    async def submit(self, model: LoadedModel, images: np.ndarray, tta: bool) -> np.ndarray:
        """Probabilities for `images` (N x 32 x 32 x 3 uint8), computed in shared batches."""
        if self.pending + len(images) > self.max_queue:
            raise Overloaded(self.pending, self.max_queue, self._retry_after())
        loop = asyncio.get_running_loop()
        now = loop.time()
        futures = []
        for image in images:
            future: asyncio.Future[np.ndarray] = loop.create_future()
            self._queue.put_nowait(_Item(model, image, tta, now, future))
            futures.append(future)
        return np.stack(await asyncio.gather(*futures))

    def _retry_after(self) -> int:
        return max(1, math.ceil(self.pending * self._seconds_per_image))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [item for item in await self._gather(loop) if not item.future.done()]
            if not batch:
                continue  # every client in it went away
            started, self._in_flight = loop.time(), batch
            try:
                results = await loop.run_in_executor(self._executor, _forward_groups, batch)
            except Exception as exc:  # never let one bad batch stop the batcher
                log.exception("batch of %d images failed", len(batch))
                results = {key: [exc] * len(batch) for key in {_key(item) for item in batch}}
            self._record(len(batch), loop.time() - started, len(results))
            _resolve(batch, results)

    async def _gather(self, loop: asyncio.AbstractEventLoop) -> list[_Item]:
        batch = [await self._queue.get()]
        deadline = batch[0].enqueued_at + self.max_delay_s  # time already spent queued counts
        while len(batch) < self.max_batch_size:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0 or not self._arriving:  # nobody is about to join: do not wait
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return batch

    def _record(self, images: int, seconds: float, passes: int) -> None:
        self.forward_passes += passes
        self.images_done += images
        self._seconds_per_image = 0.8 * self._seconds_per_image + 0.2 * seconds / max(images, 1)


def _threads(requested: int) -> int:
    # One core is left to the event loop (HTTP, decoding): an intra-op pool that takes every core
    # makes both wait on each other. The setting applies to the inference thread only (per-thread
    # OpenMP state), not to the rest of the process.
    return requested or max(1, (os.cpu_count() or 2) - 1)


Result = np.ndarray | BaseException


GroupKey = tuple[int, bool]  # (id of the model, tta)


def _key(item: _Item) -> GroupKey:
    return id(item.model), item.tta


def _forward_groups(batch: list[_Item]) -> dict[GroupKey, list[Result]]:
    """Runs in the inference thread: one forward pass per (model, tta) present in the batch."""
    groups: dict[GroupKey, list[_Item]] = defaultdict(list)
    for item in batch:
        groups[_key(item)].append(item)
    results: dict[GroupKey, list[Result]] = {}
    for key, items in groups.items():
        images = np.stack([item.image for item in items])
        observe_batch(len(items))
        try:
            results[key] = list(predict_proba(items[0].model, images, items[0].tta))
        except Exception as exc:  # a failed batch fails its requests, never the batcher
            log.exception("inference failed for model %s", items[0].model.info.id)
            results[key] = [exc] * len(items)
    return results


def _resolve(batch: list[_Item], results: dict[GroupKey, list[Result]]) -> None:
    cursors = {key: iter(values) for key, values in results.items()}
    for item in batch:
        result = next(cursors[_key(item)])
        if item.future.done():  # the client went away meanwhile
            continue
        if isinstance(result, BaseException):
            item.future.set_exception(result)
        else:
            item.future.set_result(result)
