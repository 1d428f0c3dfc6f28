"""/metrics on SQLite and PostgreSQL: request counts and latency by route template, the queue's gauges,
worker heartbeats, epoch histograms fed from the database, predict batch sizes and model reloads."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.api.main import create_app
from app.ops.health import check_local_worker
from app.settings import Settings
from app.store.db import db_time, make_engine, session_factory, transaction
from app.store.tables import Worker
from tests.served_models import png_files, register_model
from tests.sweep_rows import advance, start_trial, write_sweep

sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def make_settings(db_url: str, tmp_path: Path, **overrides: object) -> Settings:
    values = {"database_url": db_url, "artifacts_dir": tmp_path / "artifacts", "heartbeat_seconds": 10.0}
    return Settings(_env_file=None, **(values | overrides))  # type: ignore[arg-type]


@pytest.fixture
def client(db_url: str, tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(db_url, tmp_path))) as test_client:
        yield test_client


def sessions(client: TestClient) -> sessionmaker[Session]:
    return client.app.state.session_factory  # type: ignore[attr-defined]


def scrape(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of GET /metrics, parsed with prometheus-client's own parser."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float | None:  # type: ignore[type-arg]
    return samples.get((name, tuple(sorted(labels.items()))))


def add_worker(factory: sessionmaker[Session], worker_id: str, hostname: str, age: float) -> None:
    with transaction(factory) as session:
        now = session.scalar(select(db_time(session.get_bind())))  # type: ignore[arg-type]
        session.add(Worker(id=worker_id, hostname=hostname, pid=1, heartbeat_at=float(now) - age))


def test_requests_are_counted_and_timed_by_route_template_and_status(client: TestClient) -> None:
    client.get("/jobs/41")
    client.get("/jobs/42")
    client.get("/jobs")
    client.get("/no/such/path/123")
    samples = scrape(client)
    by_template = {"method": "GET", "route": "/jobs/{job_id}", "status": "404"}
    assert value(samples, "sweepserve_http_requests_total", **by_template) == 2
    assert value(samples, "sweepserve_http_request_duration_seconds_count", **by_template) == 2
    assert value(samples, "sweepserve_http_request_duration_seconds_sum", **by_template) > 0
    assert value(samples, "sweepserve_http_requests_total", method="GET", route="/jobs", status="200") == 1
    assert (
        value(samples, "sweepserve_http_requests_total", method="GET", route="unmatched", status="404") == 1
    )
    assert not any("/jobs/41" in str(labels) or "123" in str(labels) for _, labels in samples)


def test_queue_gauges_follow_the_trials(client: TestClient) -> None:
    write_sweep(sessions(client), n_trials=4)  # 3 succeeded, 1 pruned
    job_id, (first, _second) = start_trial(sessions(client), n_trials=2)
    advance(sessions(client), first, 1)  # running
    samples = scrape(client)
    assert value(samples, "sweepserve_database_up") == 1
    assert value(samples, "sweepserve_queue_depth") == 1
    assert value(samples, "sweepserve_running_trials") == 1
    expected = {"queued": 1, "running": 1, "succeeded": 3, "failed": 0, "pruned": 1, "cancelled": 0}
    for status, count in expected.items():
        assert value(samples, "sweepserve_trials", status=status) == count, status
    assert value(samples, "sweepserve_jobs", status="running") == 1
    assert value(samples, "sweepserve_jobs", status="succeeded") == 1
    client.post(f"/jobs/{job_id}/cancel")
    after = scrape(client)
    assert value(after, "sweepserve_queue_depth") == 0
    assert value(after, "sweepserve_trials", status="cancelled") == 1


def test_epoch_histograms_count_each_row_once_and_pick_up_new_ones(client: TestClient) -> None:
    sweep = write_sweep(sessions(client), n_trials=3)  # epochs take 10 s + index, 800 + 100 * index img/s
    first = scrape(client)
    assert value(first, "sweepserve_epoch_duration_seconds_count") == sweep.epochs_written
    assert value(first, "sweepserve_epoch_duration_seconds_bucket", le="15.0") == sweep.epochs_written
    assert value(first, "sweepserve_epoch_duration_seconds_bucket", le="5.0") == 0
    assert value(first, "sweepserve_epoch_images_per_second_count") == sweep.epochs_written
    assert value(first, "sweepserve_epoch_images_per_second_bucket", le="1000.0") == sweep.epochs_written
    again = scrape(client)
    assert value(again, "sweepserve_epoch_duration_seconds_count") == sweep.epochs_written  # not twice
    _job, (trial, _) = start_trial(sessions(client))
    advance(sessions(client), trial, 1)
    assert value(scrape(client), "sweepserve_epoch_duration_seconds_count") == sweep.epochs_written + 1


def test_worker_heartbeat_ages_and_the_live_count(client: TestClient) -> None:
    add_worker(sessions(client), "gpu-a:10:abc", "gpu-a", age=2.0)
    add_worker(sessions(client), "gpu-b:11:def", "gpu-b", age=600.0)  # silent for 10 min: not alive
    add_worker(sessions(client), "gone:12:0ff", "gone", age=3 * 86400.0)  # history, not a gauge
    samples = scrape(client)
    assert value(samples, "sweepserve_workers_alive") == 1
    fresh = value(samples, "sweepserve_worker_heartbeat_age_seconds", worker="gpu-a:10:abc", hostname="gpu-a")
    stale = value(samples, "sweepserve_worker_heartbeat_age_seconds", worker="gpu-b:11:def", hostname="gpu-b")
    assert fresh is not None and 1.5 < fresh < 30
    assert stale is not None and 599 < stale < 630
    assert not any(labels and ("worker", "gone:12:0ff") in labels for _, labels in samples)


def test_worker_check_is_healthy_only_with_a_fresh_heartbeat_on_this_host(
    db_url: str, tmp_path: Path
) -> None:
    settings = make_settings(db_url, tmp_path)
    factory = session_factory(engine := make_engine(db_url))
    try:
        assert check_local_worker(settings, "node-1")[0] is False
        add_worker(factory, "node-1:5:aaa", "node-1", age=100.0)  # older than 3 x 10 s
        add_worker(factory, "node-2:5:bbb", "node-2", age=1.0)  # fresh, but another host
        healthy, message = check_local_worker(settings, "node-1")
        assert not healthy and "node-1" in message
        add_worker(factory, "node-1:6:ccc", "node-1", age=5.0)
        healthy, message = check_local_worker(settings, "node-1")
        assert healthy and "node-1:6:ccc" in message
    finally:
        engine.dispose()


@sqlite_only
def test_an_unreadable_database_shows_as_down_without_failing_the_scrape(
    client: TestClient, tmp_path: Path
) -> None:
    working = client.app.state.session_factory  # type: ignore[attr-defined]
    broken = make_engine(f"sqlite:///{tmp_path / 'missing-dir' / 'db.sqlite'}")
    (tmp_path / "missing-dir").rmdir()  # make_engine created it; without it SQLite cannot open the file
    client.app.state.session_factory = session_factory(broken)  # type: ignore[attr-defined]
    try:
        samples = scrape(client)
    finally:
        client.app.state.session_factory = working  # type: ignore[attr-defined]
        broken.dispose()
    assert value(samples, "sweepserve_database_up") == 0
    assert value(samples, "sweepserve_queue_depth") is None  # absent, not a made-up 0
    assert value(scrape(client), "sweepserve_database_up") == 1


@sqlite_only
def test_predict_batches_and_model_reloads_are_counted(db_url: str, tmp_path: Path) -> None:
    settings = make_settings(db_url, tmp_path, model_poll_seconds=0.05, max_delay_ms=50.0)
    with TestClient(create_app(settings)) as client:
        before = scrape(client)
        model_id = register_model(sessions(client), tmp_path / "artifacts", val_accuracy=0.5)
        deadline = time.monotonic() + 30
        while client.app.state.predictor.status()["model_id"] != model_id:  # type: ignore[attr-defined]
            assert time.monotonic() < deadline, "the model was never loaded"
            time.sleep(0.05)
        files = [("file", (f"{i}.png", blob, "image/png")) for i, blob in enumerate(png_files(3))]
        assert client.post("/predict", files=files).status_code == 200
        after = scrape(client)

    def delta(name: str) -> float:
        return (value(after, name) or 0.0) - (value(before, name) or 0.0)

    assert delta("sweepserve_model_reloads_total") == 1
    assert delta("sweepserve_predict_batch_size_sum") == 3  # three images, one request
    assert delta("sweepserve_predict_batch_size_count") == 1  # in one forward pass


def test_gpu_memory_is_reported_exactly_when_there_is_a_gpu(client: TestClient) -> None:
    names = {name for name, _ in scrape(client)}
    assert ("sweepserve_gpu_memory_allocated_bytes" in names) is torch.cuda.is_available()
    assert "process_resident_memory_bytes" in names  # the standard process metrics come along
