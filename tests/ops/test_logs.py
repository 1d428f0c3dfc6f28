"""Logs: request ids (echoed, on every line of the request, on 500s too), job/trial ids, JSON lines."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.api.main import create_app
from app.ops.logs import configure_logging, log_context, request_id_from
from app.settings import Settings
from tests.log_state import preserved_logging

test_log = logging.getLogger("sweepserve.test")


@pytest.fixture
def restore_logging() -> Iterator[None]:
    with preserved_logging():
        yield


def settings_for(tmp_path: Path, **overrides: object) -> Settings:
    values = {"database_url": f"sqlite:///{tmp_path / 'logs.db'}", "artifacts_dir": tmp_path / "artifacts"}
    return Settings(_env_file=None, **(values | overrides))  # type: ignore[arg-type]


def app_with_test_routes(settings: Settings) -> FastAPI:
    app = create_app(settings)

    @app.get("/test/log")
    async def logs_twice(pause: float = 0.0) -> dict[str, str]:
        test_log.info("before the pause")
        await asyncio.sleep(pause)
        test_log.info("after the pause")
        return {}

    @app.get("/test/boom")
    def boom() -> None:
        raise RuntimeError("kaboom")

    return app


def json_lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]


@pytest.mark.usefixtures("restore_logging")
def test_every_line_of_a_request_carries_its_echoed_id_as_json(tmp_path: Path) -> None:
    stream = io.StringIO()
    settings = settings_for(tmp_path, log_json=True)
    configure_logging(settings, stream)
    with TestClient(app_with_test_routes(settings)) as client:
        response = client.get("/test/log", headers={"X-Request-ID": "req-42.a:b"})
    assert response.headers["x-request-id"] == "req-42.a:b"
    lines = [line for line in json_lines(stream) if line.get("request_id") == "req-42.a:b"]
    assert [(line["logger"], line["message"]) for line in lines] == [
        ("sweepserve.test", "before the pause"),
        ("sweepserve.test", "after the pause"),
        ("sweepserve.access", lines[-1]["message"]),
    ]
    assert re.fullmatch(r"GET /test/log 200 \d+\.\d ms", str(lines[-1]["message"]))
    assert {"time", "level"} <= set(lines[0]) and lines[0]["level"] == "INFO"


@pytest.mark.usefixtures("restore_logging")
def test_concurrent_requests_keep_their_own_ids(tmp_path: Path) -> None:
    stream = io.StringIO()
    settings = settings_for(tmp_path, log_json=True)
    configure_logging(settings, stream)
    app = app_with_test_routes(settings)

    async def both() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            await asyncio.gather(
                client.get("/test/log?pause=0.2", headers={"X-Request-ID": "slow"}),
                client.get("/test/log?pause=0.05", headers={"X-Request-ID": "fast"}),
            )

    asyncio.run(both())
    order = [
        (line["request_id"], line["message"])
        for line in json_lines(stream)
        if line["logger"] == "sweepserve.test"
    ]
    # Interleaved in time, yet each line names the request it belongs to.
    assert order == [
        ("slow", "before the pause"),
        ("fast", "before the pause"),
        ("fast", "after the pause"),
        ("slow", "after the pause"),
    ]


@pytest.mark.parametrize(
    "incoming", [None, "", "has space", "new\nline", "x" * 129, "-leading-dash", "ünïcode", "a;b"]
)
def test_unusable_incoming_ids_are_replaced_by_a_fresh_one(incoming: str | None) -> None:
    headers = [] if incoming is None else [(b"x-request-id", incoming.encode())]
    generated = request_id_from(headers)
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    assert request_id_from(headers) != generated  # fresh each time


@pytest.mark.usefixtures("restore_logging")
def test_a_500_carries_the_request_id_in_its_header_and_traceback_line(tmp_path: Path) -> None:
    stream = io.StringIO()
    settings = settings_for(tmp_path, log_json=True)
    configure_logging(settings, stream)
    with TestClient(app_with_test_routes(settings), raise_server_exceptions=False) as client:
        response = client.get("/test/boom")
    assert response.status_code == 500
    assert response.headers["content-type"].startswith("application/problem+json")
    request_id = response.headers["x-request-id"]
    errors = [line for line in json_lines(stream) if line["level"] == "ERROR"]
    traceback = next(line for line in errors if "exception" in line)
    assert traceback["request_id"] == request_id and "kaboom" in str(traceback["exception"])
    assert any(line["logger"] == "sweepserve.access" and line["request_id"] == request_id for line in errors)


@pytest.mark.usefixtures("restore_logging")
def test_worker_lines_carry_job_and_trial_ids_in_plain_format(tmp_path: Path) -> None:
    stream = io.StringIO()
    configure_logging(settings_for(tmp_path, log_json=False), stream)
    worker_log = logging.getLogger("sweepserve.worker")
    with log_context(worker_id="host:1"):
        worker_log.info("idle")
        with log_context(job_id=3, trial_id=7):
            worker_log.info("epoch 1 done")
        worker_log.info("idle again")
    worker_log.info("outside")
    lines = stream.getvalue().splitlines()
    assert lines[0].endswith("sweepserve.worker idle [worker_id=host:1]")
    assert lines[1].endswith("sweepserve.worker epoch 1 done [worker_id=host:1 job_id=3 trial_id=7]")
    assert lines[2].endswith("idle again [worker_id=host:1]")
    assert lines[3].endswith("sweepserve.worker outside")


@pytest.mark.usefixtures("restore_logging")
def test_json_lines_include_context_and_exceptions(tmp_path: Path) -> None:
    stream = io.StringIO()
    configure_logging(settings_for(tmp_path, log_json=True, log_level="debug"), stream)
    with log_context(job_id=1, trial_id=2):
        try:
            raise ValueError("bad batch")
        except ValueError:
            logging.getLogger("sweepserve.worker").exception("trial failed")
    logging.getLogger("anything").debug("debug shows at level debug")
    logging.getLogger("httpx").info("HTTP Request: GET /jobs")  # the CLI's per-request chatter stays out
    first, second = json_lines(stream)
    assert (first["job_id"], first["trial_id"], first["message"]) == (1, 2, "trial failed")
    assert "ValueError: bad batch" in str(first["exception"])
    assert second["message"] == "debug shows at level debug" and "job_id" not in second
