"""The predictor on SQLite and PostgreSQL: batching, hot reload, pinning and the LRU, TTA, overload."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy.orm import Session, sessionmaker

from app.errors import ModelUnavailable, NoModel, NotFound, Overloaded
from app.serving.predictor import Predictor
from app.settings import Settings
from app.store.artifacts import LocalStore
from app.store.db import transaction
from app.store.registry import promote_model
from tests.served_models import encode, png_files, register_model, synthetic_pixels

# Inference behaviour does not depend on the database: those tests run on SQLite only, while the
# tests of model selection (reload, promotion, pinning, missing models) run on both backends.
sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@pytest.fixture
def make_settings(db_url: str, tmp_path: Path) -> Callable[..., Settings]:
    def _settings(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": db_url,
            "artifacts_dir": tmp_path / "artifacts",
            "model_poll_seconds": 0.05,
            "max_batch_size": 16,
            "max_delay_ms": 20.0,
        }
        return Settings(_env_file=None, **(values | overrides))  # type: ignore[call-arg]

    return _settings


@asynccontextmanager
async def running(settings: Settings, factory: sessionmaker[Session]) -> AsyncIterator[Predictor]:
    predictor = Predictor(settings, factory)
    await predictor.start()
    try:
        yield predictor
    finally:
        await predictor.stop()


async def until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def serving(predictor: Predictor, model_id: int) -> None:
    await until(lambda: predictor.status()["model_id"] == model_id)


def batch_tolerance(predictor: Predictor) -> float:
    """How far one image's answer may move with the size of the batch it is in: fp32 agrees to
    ~1e-7, but bf16 kernels are chosen per batch shape (on an AMX Xeon the 4th digit moved)."""
    return 1e-5 if predictor.status()["precision"] == "fp32" else 5e-3


def assert_same_rows_in_order(actual: np.ndarray, expected: np.ndarray, atol: float) -> None:
    np.testing.assert_allclose(actual, expected, atol=atol)
    distances = np.abs(actual[:, None, :] - expected[None, :, :]).max(axis=2)
    assert list(distances.argmin(axis=1)) == list(range(len(expected)))  # each row nearest its own


def probabilities(response: dict[str, Any]) -> np.ndarray:
    return np.array([list(p["probabilities"].values()) for p in response["predictions"]])


async def predict(predictor: Predictor, images: list[bytes], **options: Any) -> dict[str, Any]:
    return await predictor.predict(
        images,
        model_id=options.get("model_id"),
        resize=options.get("resize", False),
        tta=options.get("tta", False),
    )


@sqlite_only
def test_concurrent_requests_share_forward_passes_and_match_unbatched(
    make_settings: Callable[..., Settings], factory: sessionmaker[Session]
) -> None:
    model_id = register_model(factory, make_settings().artifacts_dir, val_accuracy=0.5)
    images = png_files(16, seed=1)

    async def answers(settings: Settings) -> tuple[list[dict[str, Any]], int, float]:
        async with running(settings, factory) as predictor:
            await serving(predictor, model_id)
            before = predictor.forward_passes
            responses = await asyncio.gather(*(predict(predictor, [image]) for image in images))
            return responses, predictor.forward_passes - before, batch_tolerance(predictor)

    batched, batched_passes, atol = asyncio.run(answers(make_settings(max_batch_size=64, max_delay_ms=50)))
    single, single_passes, _ = asyncio.run(answers(make_settings(max_batch_size=1)))
    assert single_passes == 16
    assert batched_passes < 16 / 2  # gathered, not one pass per request
    assert {r["model"]["id"] for r in batched} == {model_id}
    assert_same_rows_in_order(
        np.concatenate([probabilities(r) for r in batched]),
        np.concatenate([probabilities(r) for r in single]),
        atol,
    )


@sqlite_only
def test_one_request_answers_in_input_order_with_a_full_body(
    make_settings: Callable[..., Settings], factory: sessionmaker[Session]
) -> None:
    settings = make_settings()
    model_id = register_model(factory, settings.artifacts_dir, val_accuracy=0.75, test_accuracy=0.7)
    images = png_files(5, seed=2)

    async def scenario() -> None:
        async with running(settings, factory) as predictor:
            await serving(predictor, model_id)
            together = await predict(predictor, images)
            alone = [await predict(predictor, [image]) for image in reversed(images)][::-1]
            assert_same_rows_in_order(
                probabilities(together),
                np.concatenate([probabilities(r) for r in alone]),
                batch_tolerance(predictor),
            )
            assert together["model"] == {
                "id": model_id,
                "job_id": together["model"]["job_id"],
                "trial_id": together["model"]["trial_id"],
                "val_accuracy": 0.75,
                "test_accuracy": 0.7,
            }
            first = together["predictions"][0]
            assert list(first["probabilities"]) == [
                "airplane",
                "automobile",
                "bird",
                "cat",
                "deer",
                "dog",
                "frog",
                "horse",
                "ship",
                "truck",
            ]
            assert first["label"] == max(first["probabilities"], key=first["probabilities"].get)
            assert first["class_index"] == list(first["probabilities"]).index(first["label"])
            assert first["confidence"] == pytest.approx(max(first["probabilities"].values()))
            assert sum(first["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)

    asyncio.run(scenario())


@sqlite_only
def test_tta_flip_averages_the_logits_of_image_and_mirror(
    make_settings: Callable[..., Settings], factory: sessionmaker[Session]
) -> None:
    settings = make_settings()
    model_id = register_model(factory, settings.artifacts_dir, val_accuracy=0.5)
    pixels = synthetic_pixels(3, seed=3)
    originals = [encode(p) for p in pixels]
    mirrors = [encode(np.ascontiguousarray(p[:, ::-1])) for p in pixels]

    async def scenario() -> None:
        async with running(settings, factory) as predictor:
            await serving(predictor, model_id)
            plain = probabilities(await predict(predictor, originals))
            mirrored = probabilities(await predict(predictor, mirrors))
            tta = probabilities(await predict(predictor, originals, tta=True))
            tta_of_mirrors = probabilities(await predict(predictor, mirrors, tta=True))
            # log p = logits - logsumexp, so softmax of the mean log p is softmax of the mean logits.
            mean_log = (np.log(plain) + np.log(mirrored)) / 2
            expected = np.exp(mean_log) / np.exp(mean_log).sum(axis=1, keepdims=True)
            np.testing.assert_allclose(tta, expected, atol=1e-4)
            np.testing.assert_allclose(tta_of_mirrors, tta, atol=1e-5)
            assert not np.allclose(tta, plain, atol=1e-4)  # the option really changes the answer

    asyncio.run(scenario())


@sqlite_only
def test_full_queue_refuses_at_once_then_recovers(
    make_settings: Callable[..., Settings], factory: sessionmaker[Session]
) -> None:
    settings = make_settings(max_batch_size=1, max_queue=8)
    model_id = register_model(factory, settings.artifacts_dir, val_accuracy=0.5)
    images = png_files(8, seed=4)

    async def scenario() -> None:
        async with running(settings, factory) as predictor:
            await serving(predictor, model_id)
            with pytest.raises(Overloaded):  # more images than the whole queue holds
                await predict(predictor, [*images, images[0]])
            first = asyncio.create_task(predict(predictor, images))
            await until(lambda: predictor.status()["pending_images"] > 0, timeout=10)
            with pytest.raises(Overloaded) as refused:
                await predict(predictor, images)
            assert refused.value.retry_after >= 1
            assert len((await first)["predictions"]) == 8  # the queued request was not harmed
            assert len((await predict(predictor, images))["predictions"]) == 8

    asyncio.run(scenario())


def test_hot_reload_under_load_switches_without_failures(
    make_settings: Callable[..., Settings], factory: sessionmaker[Session]
) -> None:
    settings = make_settings()
    old = register_model(factory, settings.artifacts_dir, val_accuracy=0.5, seed=1)
    images = png_files(4, seed=5)

    async def client(predictor: Predictor, stop: asyncio.Event, seen: list[int]) -> None:
        while not stop.is_set():
            response = await predict(predictor, images[:2])  # any exception fails the test
            seen.append(response["model"]["id"])

    async def scenario() -> None:
        async with running(settings, factory) as predictor:
            await serving(predictor, old)
            stop = asyncio.Event()
            seen: list[list[int]] = [[] for _ in range(6)]
            clients = [asyncio.create_task(client(predictor, stop, s)) for s in seen]
            await until(lambda: all(len(s) >= 2 for s in seen))
            served_before = sum(map(len, seen))
            new = await asyncio.to_thread(
                functools.partial(register_model, factory, settings.artifacts_dir, 0.9, seed=2)
            )
            await serving(predictor, new)
            assert sum(s.count(old) for s in seen) > served_before  # served while the new one loaded
            await until(lambda: all(s[-1] == new for s in seen))
            stop.set()
            await asyncio.gather(*clients)
            for ids in seen:  # each client saw the old model, then only the new one
                assert set(ids) == {old, new}
                assert ids == sorted(ids, key=lambda i: i == new)
            assert predictor.status()["reloads"] == 2

    asyncio.run(scenario())


def test_promotion_wins_over_accuracy_and_request_reload_is_prompt(
    make_settings: Callable[..., Settings], factory: sessionmaker[Session]
) -> None:
    settings = make_settings(model_poll_seconds=120)  # only request_reload can make it look again
    best = register_model(factory, settings.artifacts_dir, val_accuracy=0.9, seed=1)
    weaker = register_model(factory, settings.artifacts_dir, val_accuracy=0.3, seed=2)

    async def scenario() -> None:
        async with running(settings, factory) as predictor:
            await serving(predictor, best)
            with transaction(factory) as session:
                promote_model(session, weaker, LocalStore(settings.artifacts_dir))
            predictor.request_reload()
            await serving(predictor, weaker)
            assert (await predict(predictor, png_files(1)))["model"]["id"] == weaker

    asyncio.run(scenario())


def test_model_id_pins_a_model_and_the_lru_keeps_the_active_one(
    make_settings: Callable[..., Settings], factory: sessionmaker[Session]
) -> None:
    settings = make_settings(model_cache_size=2)
    active = register_model(factory, settings.artifacts_dir, val_accuracy=0.9, seed=1)
    second = register_model(factory, settings.artifacts_dir, val_accuracy=0.5, seed=2)
    third = register_model(factory, settings.artifacts_dir, val_accuracy=0.4, seed=3)
    image = png_files(1, seed=6)

    async def scenario() -> None:
        async with running(settings, factory) as predictor:
            await serving(predictor, active)
            by_id = {m: await predict(predictor, image, model_id=m) for m in (active, second, third)}
            assert {m: r["model"]["id"] for m, r in by_id.items()} == {
                active: active,
                second: second,
                third: third,
            }
            assert not np.allclose(probabilities(by_id[active]), probabilities(by_id[second]))
            assert predictor.status()["cached_model_ids"] == [active, third]  # second was least recent
            again = await predict(predictor, image, model_id=second)  # reloaded from disk, same answer
            np.testing.assert_allclose(probabilities(again), probabilities(by_id[second]), atol=1e-6)
            assert set(predictor.status()["cached_model_ids"]) == {active, second}
            assert (await predict(predictor, image))["model"]["id"] == active
            with pytest.raises(NotFound):
                await predict(predictor, image, model_id=third + 100)

    asyncio.run(scenario())


def test_no_model_yet_is_reported_not_crashed(
    make_settings: Callable[..., Settings], factory: sessionmaker[Session]
) -> None:
    async def scenario() -> None:
        async with running(make_settings(), factory) as predictor:
            await asyncio.sleep(0.2)  # a few polls
            assert predictor.status()["model_id"] is None and predictor.status()["loaded"] is False
            with pytest.raises(NoModel, match="no model"):
                await predict(predictor, png_files(1))

    asyncio.run(scenario())


def test_unloadable_new_model_keeps_the_old_one_serving(
    make_settings: Callable[..., Settings], factory: sessionmaker[Session]
) -> None:
    settings = make_settings()
    good = register_model(factory, settings.artifacts_dir, val_accuracy=0.5, seed=1)
    image = png_files(1)

    async def scenario() -> None:
        async with running(settings, factory) as predictor:
            await serving(predictor, good)
            register = functools.partial(register_model, factory, settings.artifacts_dir, 0.95, corrupt=True)
            broken = await asyncio.to_thread(register)
            await until(lambda: predictor.status()["last_error"] is not None)
            assert f"model {broken}" in predictor.status()["last_error"]
            assert (await predict(predictor, image))["model"]["id"] == good
            with pytest.raises(ModelUnavailable):
                await predict(predictor, image, model_id=broken)

    asyncio.run(scenario())


@sqlite_only
def test_a_client_that_goes_away_does_not_stall_the_others(
    make_settings: Callable[..., Settings], factory: sessionmaker[Session]
) -> None:
    settings = make_settings(max_batch_size=4, max_delay_ms=30)
    model_id = register_model(factory, settings.artifacts_dir, val_accuracy=0.5)
    images = png_files(8, seed=7)

    async def scenario() -> None:
        async with running(settings, factory) as predictor:
            await serving(predictor, model_id)
            leaving = asyncio.create_task(predict(predictor, images))
            staying = asyncio.create_task(predict(predictor, images[:3]))
            await asyncio.sleep(0.005)
            leaving.cancel()
            assert len((await asyncio.wait_for(staying, 30))["predictions"]) == 3
            assert len((await predict(predictor, images))["predictions"]) == 8

    asyncio.run(scenario())
