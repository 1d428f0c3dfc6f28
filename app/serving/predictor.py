"""The predictor behind /predict: the active model, hot reload, an LRU of pinned models, batching.

The active model is re-read from the database every `model_poll_seconds` (or at once after
`request_reload()`). A new one is loaded and warmed up in a thread beside the old one, then
swapped in by a single assignment: requests already queued finish on the model they were given,
new ones get the new model, and none waits for the load.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from app.errors import Conflict, ModelUnavailable, NoModel, NotFound, Overloaded
from app.ops.instruments import count_reload
from app.serving.batching import DynamicBatcher
from app.serving.imaging import DecodeOptions, decode_all, inspect_all
from app.serving.inference import LoadedModel, load_model, pick_device
from app.settings import Settings
from app.store.artifacts import ArtifactStore, open_store
from app.store.registry import (
    CHAMPION,
    ModelInfo,
    active_model_info,
    existing_model_ids,
    resolve_alias,
    unarchived_model,
)

log = logging.getLogger("sweepserve.predictor")


class Predictor:
    def __init__(
        self, settings: Settings, session_factory: sessionmaker[Session], store: ArtifactStore | None = None
    ) -> None:
        self._settings = settings
        self._store = store or open_store(settings)
        self._sessions = session_factory
        self._device = pick_device()
        self._batcher = DynamicBatcher(
            settings.max_batch_size,
            settings.max_delay_ms / 1000,
            settings.max_queue,
            settings.inference_threads,
        )
        self._active: LoadedModel | None = None
        self._cache: OrderedDict[int, LoadedModel] = OrderedDict()  # LRU, most recent last
        self._loading: dict[int, asyncio.Future[LoadedModel]] = {}
        # Deleted models: never served or cached again. Ids are never reused (AUTOINCREMENT), so
        # the set only grows by what was deleted while this process ran.
        self._forgotten: set[int] = set()
        self._refreshing: asyncio.Future[int | None] | None = None
        # Decoding runs in a pool of its own, bounded, and is admitted by pixels (see _decoding).
        self._decode_pool = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode")
        self._decoding_pixels = 0
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._poller: asyncio.Task[None] | None = None
        self.reloads = 0  # switches of the active model
        self.last_error: str | None = None

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._batcher.start()
        self._poller = asyncio.create_task(self._poll_forever(), name="model-poller")

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        await self._batcher.stop()
        self._decode_pool.shutdown(wait=False, cancel_futures=True)

    def request_reload(self) -> None:
        """Look for a new active model now. Safe to call from any thread."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake.set)

    def forget(self, model_ids: Iterable[int]) -> None:
        """Stop serving these (deleted) models at once; safe to call from any thread.

        Requests whose images are already in a batch keep their reference and finish; every later
        request resolves its model again (`?model_id=` -> 404, no model_id -> the new active one).
        """
        gone = set(model_ids)
        if not gone:
            return
        self._forgotten |= gone
        for model_id in gone:
            self._cache.pop(model_id, None)
        active = self._active
        if active is not None and active.info.id in gone:
            self._active = None
        self.request_reload()

    def status(self) -> dict[str, Any]:
        return {
            "model_id": self._active.info.id if self._active else None,
            "loaded": self._active is not None,
            "cached_model_ids": list(self._cache),
            "device": str(self._device),
            "precision": self._active.precision if self._active else None,
            "pending_images": self._batcher.pending,
            "forward_passes": self._batcher.forward_passes,
            "images_predicted": self._batcher.images_done,
            "reloads": self.reloads,
            "last_error": self.last_error,
        }

    @property
    def forward_passes(self) -> int:
        return self._batcher.forward_passes

    # --- prediction ------------------------------------------------------------------------

    async def predict(
        self,
        images: list[bytes],
        *,
        model_id: int | None,
        resize: bool,
        tta: bool,
        alias: str | None = None,
    ) -> dict:
        """Decode (in a thread), batch with concurrent requests, answer in input order.

        The images are checked before the model is looked up: a bad input is a 4xx even when
        there is no model to serve. `alias` names a model (`champion` is the default).
        """
        options = DecodeOptions(resize=resize, max_scans=self._settings.max_jpeg_scans)
        cost = inspect_all(images, options, self._settings.max_request_pixels)  # headers only
        with self._batcher.arriving(len(images)), self._decoding(cost):
            loop = asyncio.get_running_loop()
            pixels = await loop.run_in_executor(self._decode_pool, decode_all, images, options)
        model = await self.resolve(model_id, alias)
        probs = await self._batcher.submit(model, pixels, tta)  # no await in between: queued at once
        return {"model": model.info.public(), "predictions": [_prediction(p, model.classes) for p in probs]}

    async def infer(self, model: LoadedModel, images: np.ndarray) -> np.ndarray:
        """Probabilities of already-decoded uint8 images (N x 32 x 32 x 3), on the shared batcher
        (and under its queue bound: Overloaded -> 503)."""
        return await self._batcher.submit(model, images, tta=False)

    @contextlib.contextmanager
    def _decoding(self, pixels: int) -> Iterator[None]:
        """Admission by decoded pixels: a request that would push the pixels being decoded past
        `max_decode_pixels` is refused at once (a lone request always gets in)."""
        limit = self._settings.max_decode_pixels
        if self._decoding_pixels and self._decoding_pixels + pixels > limit:
            raise Overloaded(self._decoding_pixels, limit, 1, unit="pixels")
        self._decoding_pixels += pixels
        try:
            yield
        finally:
            self._decoding_pixels -= pixels

    async def resolve(self, model_id: int | None = None, alias: str | None = None) -> LoadedModel:
        """The loaded model for an id, an alias, or (neither) the champion. NotFound -> 404."""
        if alias is not None and alias != CHAMPION:
            model_id = await asyncio.to_thread(self._read_alias, alias)
        return await self._model_for(model_id)

    async def preload(self, info: ModelInfo) -> None:
        """Load a model into the cache now; Conflict (409) when it cannot be loaded."""
        try:
            await self._load(info)
        except Exception as exc:
            raise Conflict(f"model {info.id} cannot be loaded: {exc}") from exc

    async def _model_for(self, model_id: int | None) -> LoadedModel:
        if model_id is not None and model_id in self._forgotten:
            raise NotFound(f"model {model_id} does not exist")
        active = self._active
        if model_id is None and active is None:
            # Read-your-writes: a model registered since the last poll answers this request.
            await self.refresh_now()
            active = self._active
        if model_id is None or (active is not None and active.info.id == model_id):
            if active is None:
                raise NoModel(self._no_model_reason())
            return active
        if model_id in self._cache:
            self._cache.move_to_end(model_id)
            return self._cache[model_id]
        info = await asyncio.to_thread(self._read_model, model_id)  # NotFound -> 404
        try:
            return await self._load(info)
        except Exception as exc:
            raise ModelUnavailable(f"model {model_id} could not be loaded: {exc}") from exc

    def _no_model_reason(self) -> str:
        if self.last_error:
            return f"the active model could not be loaded: {self.last_error}"
        return "no model has been trained and registered yet; submit a job and wait for a trial to finish"

    # --- hot reload ------------------------------------------------------------------------

    async def refresh_now(self) -> None:
        """Re-read the registry now; concurrent callers share one read. Errors are noted, not raised.

        A read already under way may have started before the caller's write: it is waited for,
        then one that started after the call is joined (or started)."""
        earlier = self._refreshing
        if earlier is not None and not earlier.done():
            with contextlib.suppress(Exception):
                await asyncio.shield(earlier)
        if self._refreshing is earlier or self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.ensure_future(self.refresh())
        try:
            await asyncio.shield(self._refreshing)
        except Exception as exc:
            self._note_error(f"looking for the active model failed: {exc}")

    async def refresh(self) -> int | None:
        """Switch to the database's active model if it changed; returns the active model id.
        Cached models deleted or archived meanwhile (by this or another process) leave the cache
        (an archived model may come back when its trial is extended: it is not `forget`-ed)."""
        info, gone = await asyncio.to_thread(self._read_active)
        for model_id in gone:
            self._cache.pop(model_id, None)
        if info is None:
            # No model registered (or its job was deleted: serving it would answer for a ghost).
            self._active, self.last_error = None, None
            return None
        if self._active is not None and self._active.info.id == info.id:
            return info.id
        try:
            model = await self._load(info)
        except Exception as exc:  # keep serving the old model
            self._note_error(f"model {info.id}: {exc}")
            return self._active.info.id if self._active else None
        self._active, self.last_error = model, None
        self.reloads += 1
        count_reload()
        self._evict()
        log.info("now serving model %d (val_accuracy %.4f)", info.id, info.val_accuracy)
        return info.id

    async def _poll_forever(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception as exc:  # e.g. the database is briefly unreachable
                self._note_error(f"looking for the active model failed: {exc}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._settings.model_poll_seconds)
            self._wake.clear()

    def _note_error(self, message: str) -> None:
        if message != self.last_error:
            log.error("%s", message)
        self.last_error = message

    def _read_active(self) -> tuple[ModelInfo | None, set[int]]:
        """The active model, and which of the cached (or served) models no longer exist."""
        held = set(self._cache) | ({self._active.info.id} if self._active else set())
        with self._sessions() as session:
            return active_model_info(session), held - existing_model_ids(session, held)

    def _read_alias(self, name: str) -> int:
        with self._sessions() as session:
            return resolve_alias(session, name).id

    def _read_model(self, model_id: int) -> ModelInfo:
        with self._sessions() as session:
            return ModelInfo.from_row(unarchived_model(session, model_id))  # archived: 410

    # --- loading and the LRU ---------------------------------------------------------------

    async def _load(self, info: ModelInfo) -> LoadedModel:
        """Load once per id even when many requests ask at the same time; cache the result."""
        if info.id in self._cache:
            self._cache.move_to_end(info.id)
            return self._cache[info.id]
        future = self._loading.get(info.id)
        if future is None:
            future = asyncio.ensure_future(self._load_and_cache(info))
            self._loading[info.id] = future
            future.add_done_callback(lambda _: self._loading.pop(info.id, None))
        return await asyncio.shield(future)  # a client leaving must not abort a shared load

    async def _load_and_cache(self, info: ModelInfo) -> LoadedModel:
        warmup = tuple(sorted({1, self._settings.max_batch_size}))
        model = await asyncio.to_thread(load_model, info, self._store, self._device, warmup)
        if info.id in self._forgotten:  # deleted while it loaded
            raise NotFound(f"model {info.id} does not exist")
        self._cache[info.id] = model
        self._evict(protect=info.id)
        return model

    def _evict(self, protect: int | None = None) -> None:
        keep = {protect, self._active.info.id if self._active else None}
        for model_id in list(self._cache):
            if len(self._cache) <= self._settings.model_cache_size:
                break
            if model_id not in keep:
                del self._cache[model_id]  # in-flight requests still hold their reference


def _prediction(probs: np.ndarray, classes: tuple[str, ...]) -> dict[str, Any]:
    best = int(probs.argmax())
    return {
        "label": classes[best],
        "class_index": best,
        "confidence": float(probs[best]),
        "probabilities": {name: float(p) for name, p in zip(classes, probs, strict=True)},
    }
