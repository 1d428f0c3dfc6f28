"""The Open Inference Protocol routes, driven by the real Triton HTTP client against a live server:
health, metadata, and 64 CIFAR-10 test images (the shared copy when present, else synthetic ones)
classified exactly as /predict classifies them."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from PIL import Image

from app.api.main import create_app
from app.settings import Settings
from tests.live_server import serve
from tests.served_models import encode, register_model, synthetic_pixels

tritonclient_http = pytest.importorskip(
    "tritonclient.http", reason="pip install 'tritonclient[http]' (dev extra)"
)
from tritonclient.utils import InferenceServerException  # noqa: E402

SHARED_CIFAR = Path("/work/shared/datasets/cifar10-jpeg.tar.gz")
COUNT = 64
AUTH = {
    "Authorization": "Bearer s3cret"
}  # per call, a copy each time: the Triton client adds to the dict it is given
sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def cifar_test_images(count: int) -> np.ndarray:
    """The first `count` images of CIFAR-10's test split (uint8 N x 32 x 32 x 3), or synthetic ones."""
    if not SHARED_CIFAR.is_file():
        return synthetic_pixels(count, seed=7)
    images = []
    with tarfile.open(SHARED_CIFAR, "r:gz") as tar:
        for member in tar:
            if member.isfile() and "/test/" in f"/{member.name}" and len(images) < count:
                with Image.open(io.BytesIO(tar.extractfile(member).read())) as image:  # type: ignore[union-attr]
                    images.append(np.asarray(image.convert("RGB")))
            if len(images) == count:
                break
    return np.stack(images)


@pytest.fixture
def live(db_url: str, tmp_path: Path) -> Iterator[tuple[FastAPI, str, int]]:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=db_url,
        artifacts_dir=tmp_path / "artifacts",
        allow_download=False,
        api_key="s3cret",
    )
    app = create_app(settings)
    with serve(app) as url:
        model_id = register_model(app.state.session_factory, settings.artifacts_dir, val_accuracy=0.6)
        yield app, url, model_id


def client_for(url: str) -> object:
    return tritonclient_http.InferenceServerClient(url=url.removeprefix("http://"))


@sqlite_only
def test_triton_client_infers_cifar_images_with_the_same_classes_as_predict(
    live: tuple[FastAPI, str, int],
) -> None:
    _, url, model_id = live
    client = client_for(url)
    assert client.is_server_live(headers=dict(AUTH)) and client.is_server_ready(headers=dict(AUTH))  # type: ignore[attr-defined]
    assert client.is_model_ready("champion", headers=dict(AUTH)) and client.is_model_ready(
        str(model_id), headers=dict(AUTH)
    )  # type: ignore[attr-defined]
    metadata = client.get_model_metadata("champion", headers=dict(AUTH))  # type: ignore[attr-defined]
    assert metadata["inputs"] == [{"name": "images", "datatype": "UINT8", "shape": [-1, 32, 32, 3]}]
    assert metadata["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]
    classes = metadata["parameters"]["classes"]
    assert classes[3] == "cat" and len(classes) == 10

    images = cifar_test_images(COUNT)
    answers = {}
    for binary in (False, True):  # JSON tensors, and the binary tensor extension
        tensor = tritonclient_http.InferInput("images", list(images.shape), "UINT8")
        tensor.set_data_from_numpy(images, binary_data=binary)
        wanted = tritonclient_http.InferRequestedOutput("probabilities", binary_data=False)
        result = client.infer("champion", [tensor], outputs=[wanted], headers=dict(AUTH))  # type: ignore[attr-defined]
        answers[binary] = result.as_numpy("probabilities")
        assert answers[binary].shape == (COUNT, 10) and answers[binary].dtype == np.float32
    np.testing.assert_allclose(answers[False], answers[True], atol=1e-5)

    files = [("file", (f"{i}.png", encode(image), "image/png")) for i, image in enumerate(images)]
    predicted = httpx.post(f"{url}/predict", files=files, headers=dict(AUTH), timeout=60)
    assert predicted.status_code == 200, predicted.text
    labels = [p["label"] for p in predicted.json()["predictions"]]
    assert [classes[i] for i in answers[False].argmax(axis=1)] == labels
    expected = np.array([[p["probabilities"][c] for c in classes] for p in predicted.json()["predictions"]])
    np.testing.assert_allclose(answers[False], expected, atol=1e-4)


@sqlite_only
def test_v2_errors_reach_the_triton_client_and_probes_need_no_key(live: tuple[FastAPI, str, int]) -> None:
    _, url, model_id = live
    client = client_for(url)
    tensor = tritonclient_http.InferInput("images", [1, 32, 32, 3], "UINT8")
    tensor.set_data_from_numpy(np.zeros((1, 32, 32, 3), np.uint8), binary_data=False)
    with pytest.raises(InferenceServerException, match="alias 'nobody' names no model"):
        client.infer("nobody", [tensor], headers=dict(AUTH))  # type: ignore[attr-defined]
    with pytest.raises(InferenceServerException, match=f"model {model_id + 100} does not exist"):
        client.infer(str(model_id + 100), [tensor], headers=dict(AUTH))  # type: ignore[attr-defined]
    wrong = tritonclient_http.InferInput("images", [1, 16, 16, 3], "UINT8")
    wrong.set_data_from_numpy(np.zeros((1, 16, 16, 3), np.uint8), binary_data=False)
    with pytest.raises(InferenceServerException, match=r"shape must be \[N, 32, 32, 3\]"):
        client.infer("champion", [wrong], headers=dict(AUTH))  # type: ignore[attr-defined]
    assert httpx.get(f"{url}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{url}/v2/health/ready").status_code == 200
    assert httpx.get(f"{url}/v2/models/champion").status_code == 401  # the rest needs the key
