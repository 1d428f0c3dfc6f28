"""POST /predict through the real app: formats, options, limits, and every bad input a 4xx problem."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.api.main import create_app
from app.settings import Settings
from app.store.tables import RegisteredModel
from tests.served_models import (
    as_base64,
    encode,
    jpeg_scan_bomb,
    png_declaring,
    png_files,
    problem,
    register_model,
    synthetic_pixels,
    wait_until_serving,
)

MAX_IMAGES = 8
MAX_QUEUE = 6
MAX_BODY = 64 * 1024
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    limits = {
        "max_images_per_request": MAX_IMAGES,
        "max_queue": MAX_QUEUE,
        "max_body_bytes": MAX_BODY,
        "model_poll_seconds": 0.05,
        "max_batch_size": 8,
        "max_request_pixels": 4 * 1024 * 1024,
    }
    return settings.model_copy(update=limits)


@pytest.fixture
def model_id(client: TestClient, sessions: sessionmaker[Session], settings: Settings) -> int:
    """A registered model that the app's predictor is already serving."""
    model = register_model(sessions, settings.artifacts_dir, val_accuracy=0.6, test_accuracy=0.55)
    wait_until_serving(client, model)
    return model


def files(blobs: list[bytes], name: str = "file", mime: str = "image/png") -> list[tuple[str, Any]]:
    return [(name, (f"{i}.png", blob, mime)) for i, blob in enumerate(blobs)]


def probabilities(body: dict[str, Any]) -> np.ndarray:
    return np.array([list(p["probabilities"].values()) for p in body["predictions"]])


# --- answers ----------------------------------------------------------------------------------


def test_no_model_yet_is_a_503_problem_saying_so(client: TestClient) -> None:
    body = problem(client.post("/predict", files=files(png_files(1))), 503)
    assert "no model" in body["detail"]


def test_multipart_files_are_answered_in_order_by_the_active_model(client: TestClient, model_id: int) -> None:
    images = png_files(3, seed=1)
    response = client.post("/predict", files=files(images))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"]["id"] == model_id and body["model"]["val_accuracy"] == 0.6
    assert body["model"]["test_accuracy"] == 0.55 and {"job_id", "trial_id"} <= set(body["model"])
    assert len(body["predictions"]) == 3
    singles = [client.post("/predict", files=files([image])).json() for image in images]
    np.testing.assert_allclose(
        probabilities(body), np.concatenate([probabilities(s) for s in singles]), atol=1e-5
    )
    first = body["predictions"][0]
    assert (
        set(first) == {"label", "class_index", "confidence", "probabilities"}
        and len(first["probabilities"]) == 10
    )


def test_json_base64_gives_the_same_answer_as_multipart(client: TestClient, model_id: int) -> None:
    images = png_files(2, seed=2)
    as_json = client.post("/predict", json={"images": [as_base64(i) for i in images]})
    as_files = client.post("/predict", files=files(images))
    assert as_json.status_code == 200, as_json.text
    np.testing.assert_allclose(probabilities(as_json.json()), probabilities(as_files.json()), atol=1e-6)
    data_url = client.post("/predict", json={"images": ["data:image/png;base64," + as_base64(images[0])]})
    assert data_url.status_code == 200


@sqlite_only
def test_jpeg_grey_and_rgba_are_accepted(client: TestClient, model_id: int) -> None:
    pixels = synthetic_pixels(1, seed=3)[0]
    blobs = [
        encode(pixels, "JPEG"),
        encode(pixels, mode="L"),
        encode(pixels, mode="RGBA"),
        encode(pixels, mode="P"),
    ]
    response = client.post("/predict", files=files(blobs))
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == 4


@sqlite_only
def test_other_sizes_are_refused_by_name_unless_resize(client: TestClient, model_id: int) -> None:
    big = encode(np.zeros((48, 64, 3), np.uint8))
    body = problem(client.post("/predict", files=files([png_files(1)[0], big])), 422)
    assert "64x48" in body["detail"] and body["index"] == 1
    assert client.post("/predict", params={"resize": "true"}, files=files([big])).status_code == 200


@sqlite_only
def test_tta_flip_changes_the_answer_and_bad_options_are_422(client: TestClient, model_id: int) -> None:
    image = png_files(1, seed=4)
    plain = client.post("/predict", files=files(image)).json()
    flip = client.post("/predict", params={"tta": "flip"}, files=files(image))
    assert flip.status_code == 200 and not np.allclose(
        probabilities(flip.json()), probabilities(plain), atol=1e-5
    )
    assert (
        "tta" in problem(client.post("/predict", params={"tta": "mirror"}, files=files(image)), 422)["detail"]
    )
    assert (
        "model_id"
        in problem(client.post("/predict", params={"model_id": 0}, files=files(image)), 422)["detail"]
    )


def test_model_id_pins_a_model_and_unknown_ids_are_404(
    client: TestClient, model_id: int, sessions: sessionmaker[Session], settings: Settings
) -> None:
    other = register_model(sessions, settings.artifacts_dir, val_accuracy=0.1, seed=9)  # worse: not active
    image = files(png_files(1))
    assert client.post("/predict", params={"model_id": other}, files=image).json()["model"]["id"] == other
    assert client.post("/predict", files=image).json()["model"]["id"] == model_id
    assert (
        f"model {other + 1}"
        in problem(client.post("/predict", params={"model_id": other + 1}, files=image), 404)["detail"]
    )


def test_a_deleted_jobs_model_is_never_served_again_and_its_id_is_not_reused(
    client: TestClient, model_id: int, sessions: sessionmaker[Session], settings: Settings
) -> None:
    """Delete job 1 (the served model, also cached for ?model_id=), train job 2: /predict answers
    with job 2's model at once and ?model_id=<job 1's model> is 404, on SQLite and PostgreSQL."""
    image = files(png_files(1))
    assert client.post("/predict", params={"model_id": model_id}, files=image).status_code == 200
    with sessions() as session:
        job_id = session.get(RegisteredModel, model_id).job_id  # type: ignore[union-attr]
    assert client.delete(f"/jobs/{job_id}").status_code == 204
    second = register_model(sessions, settings.artifacts_dir, val_accuracy=0.3, seed=5)
    assert second > model_id  # never the deleted model's id again
    assert client.post("/predict", files=image).json()["model"]["id"] == second  # no wait for a poll
    body = problem(client.post("/predict", params={"model_id": model_id}, files=image), 404)
    assert f"model {model_id}" in body["detail"]
    assert client.get(f"/models/{model_id}").status_code == 404


def test_a_model_registered_since_the_last_poll_answers_the_next_request(
    client: TestClient, sessions: sessionmaker[Session], settings: Settings
) -> None:
    """Read-your-writes: no 503 window between a model's registration and the predictor's poll."""
    never = settings.model_copy(update={"model_poll_seconds": 3600.0})
    with TestClient(create_app(never), raise_server_exceptions=False) as slow:
        assert slow.app.state.predictor.status()["model_id"] is None  # type: ignore[attr-defined]
        model = register_model(sessions, settings.artifacts_dir, val_accuracy=0.5)
        response = slow.post("/predict", files=files(png_files(1)))
        assert response.status_code == 200, response.text
        assert response.json()["model"]["id"] == model


def test_a_non_image_with_no_model_is_a_4xx_not_a_503(client: TestClient) -> None:
    problem(client.post("/predict", files=files([b"not an image at all"])), 415)


def test_decode_bombs_are_refused_before_any_decoding(client: TestClient, settings: Settings) -> None:
    """A 20,000-scan JPEG is a 422 (also with no model: images are checked first), and a request
    whose images add up to more pixels than SWEEPSERVE_MAX_REQUEST_PIXELS is a 413."""
    bomb = jpeg_scan_bomb(scans=2_000, size=256)  # the body limit here is 64 KiB
    body = problem(
        client.post("/predict", params={"resize": True}, files=files([bomb], mime="image/jpeg")), 422
    )
    assert "2000 scans" in body["detail"] and body["index"] == 0
    flat = encode(np.zeros((1024, 1024, 3), np.uint8))  # 1 M pixels in a few KB of PNG
    count = settings.max_request_pixels // (1024 * 1024) + 1
    body = problem(client.post("/predict", params={"resize": True}, files=files([flat] * count)), 413)
    assert f"at most {settings.max_request_pixels} are decoded per request" in body["detail"]


@sqlite_only
def test_full_queue_is_503_with_retry_after(client: TestClient, model_id: int) -> None:
    response = client.post("/predict", files=files(png_files(MAX_QUEUE + 1)))
    problem(response, 503)
    assert int(response.headers["retry-after"]) >= 1
    assert client.post("/predict", files=files(png_files(MAX_QUEUE))).status_code == 200


# --- input safety: every bad input is a 4xx problem, never a 5xx -----------------------------


def _tiny(fmt: str) -> bytes:
    return encode(synthetic_pixels(1)[0], fmt)


BAD_FILES = {
    "text": (b"certainly not an image", 415),
    "gif": (_tiny("GIF"), 415),
    "bmp": (_tiny("BMP"), 415),
    "tiff": (_tiny("TIFF"), 415),
    "truncated png": (_tiny("PNG")[:200], 422),
    "truncated jpeg": (_tiny("JPEG")[:300], 422),
    "empty file": (b"", 422),
    "bomb": (png_declaring(60_000, 60_000), 422),
}


@sqlite_only
@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_files_are_refused_with_their_index(client: TestClient, model_id: int, case: str) -> None:
    blob, status = BAD_FILES[case]
    good = png_files(1)[0]
    for params in ({}, {"resize": "true"}):
        body = problem(client.post("/predict", params=params, files=files([good, blob])), status)
        assert body["index"] == 1 and "image 1" in body["detail"]
    body = problem(client.post("/predict", json={"images": [as_base64(good), as_base64(blob)]}), status)
    assert body["index"] == 1


@sqlite_only
@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"images": ["!!not base64!!"]}, "image 0"),
        ({"images": []}, "images"),
        ({"images": "abc"}, "images"),
        ({"images": [42]}, "images.0"),
        ({"pictures": ["abc"]}, "pictures"),
    ],
)
def test_bad_json_bodies_are_422_naming_the_problem(
    client: TestClient, model_id: int, body: dict[str, Any], field: str
) -> None:
    assert field in problem(client.post("/predict", json=body), 422)["detail"]


@sqlite_only
def test_malformed_json_and_empty_bodies_are_422(client: TestClient, model_id: int) -> None:
    headers = {"content-type": "application/json"}
    problem(client.post("/predict", content=b'{"images": [', headers=headers), 422)
    problem(client.post("/predict", content=b"", headers=headers), 422)
    problem(client.post("/predict"), 422)


@sqlite_only
def test_unsupported_content_type_is_415(client: TestClient, model_id: int) -> None:
    response = client.post("/predict", content=png_files(1)[0], headers={"content-type": "image/png"})
    assert "multipart" in problem(response, 415)["detail"]


@sqlite_only
def test_multipart_without_file_parts_or_with_a_broken_boundary_is_422(
    client: TestClient, model_id: int
) -> None:
    problem(client.post("/predict", data={"note": "hello"}, files=files(png_files(1), name="other")), 422)
    broken = b"--x\r\nContent-Disposition: form-data; name=file; filename=a.png\r\n\r\nabc"  # never closed
    problem(client.post("/predict", content=broken, headers={"content-type": "multipart/form-data"}), 422)


@sqlite_only
def test_too_many_images_is_413(client: TestClient, model_id: int) -> None:
    images = png_files(MAX_IMAGES + 1)
    assert str(MAX_IMAGES) in problem(client.post("/predict", files=files(images)), 413)["detail"]
    assert (
        str(MAX_IMAGES)
        in problem(client.post("/predict", json={"images": [as_base64(i) for i in images]}), 413)["detail"]
    )


@sqlite_only
def test_too_many_form_parts_is_413(client: TestClient, model_id: int) -> None:
    fields = [(f"field{i}", (None, b"x")) for i in range(40)]
    problem(client.post("/predict", files=[*files(png_files(1)), *fields]), 413)


@sqlite_only
def test_body_over_the_cap_is_413_declared_or_streamed(client: TestClient, model_id: int) -> None:
    blob = b"\x89PNG" + b"\x00" * MAX_BODY
    problem(client.post("/predict", files=files([blob])), 413)

    def chunks() -> Iterator[bytes]:  # no Content-Length: the cap must hold while streaming
        for _ in range(MAX_BODY // 1024 + 8):
            yield b"a" * 1024

    problem(client.post("/predict", content=chunks(), headers={"content-type": "application/json"}), 413)
    assert client.post("/predict", files=files(png_files(1))).status_code == 200  # still serving
