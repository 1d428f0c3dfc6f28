"""/models: listing, the active flag, promotion (and /predict following it), export in three formats."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.settings import Settings
from app.store.tables import RegisteredModel
from ml.checkpoint import load_for_inference
from ml.config import TrainConfig
from ml.evaluate import predict_logits
from ml.models import build_model
from tests.served_models import png_files, problem, register_model, synthetic_pixels, wait_until_serving

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # Polling effectively off: only promotion's request_reload can switch the predictor quickly.
    return settings.model_copy(update={"model_poll_seconds": 300.0})


def register(sessions: sessionmaker[Session], settings: Settings, val_accuracy: float, seed: int) -> int:
    return register_model(sessions, settings.artifacts_dir, val_accuracy=val_accuracy, seed=seed)


def reference_logits(
    settings: Settings, sessions: sessionmaker[Session], model_id: int, images: np.ndarray
) -> np.ndarray:
    """What the trainer's evaluation computes for these uint8 NHWC images, in fp32 on the CPU."""
    with sessions() as session:
        path = settings.artifacts_dir / session.get(RegisteredModel, model_id).path  # type: ignore[union-attr]
    model, meta = load_for_inference(path, "cpu")
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    with torch.inference_mode():
        return predict_logits(model, x, meta["mean"], meta["std"], tta=False, precision="fp32").numpy()


def test_models_list_newest_first_with_the_best_active(
    client: TestClient, sessions: sessionmaker[Session], settings: Settings
) -> None:
    assert client.get("/models").json() == {"items": []}
    worse = register(sessions, settings, 0.4, seed=1)
    better = register(sessions, settings, 0.8, seed=2)
    items = client.get("/models").json()["items"]
    assert [m["id"] for m in items] == [better, worse]
    assert [m["active"] for m in items] == [True, False]
    assert set(items[0]) >= {
        "id",
        "job_id",
        "trial_id",
        "arch",
        "epoch",
        "val_accuracy",
        "test_accuracy",
        "created_at",
    }
    assert items[0]["arch"] == "resnet18_imagenet" and items[0]["val_accuracy"] == 0.8
    one = client.get(f"/models/{worse}").json()
    assert one == items[1]


def test_unknown_and_invalid_model_ids(client: TestClient) -> None:
    assert "model 12345" in problem(client.get("/models/12345"), 404)["detail"]
    problem(client.get("/models/0"), 422)
    problem(client.post("/models/12345/promote"), 404)
    problem(client.get("/models/12345/export?format=onnx"), 404)


def test_promote_makes_predict_switch_promptly(
    client: TestClient, sessions: sessionmaker[Session], settings: Settings
) -> None:
    best = register(sessions, settings, 0.9, seed=1)
    client.app.state.predictor.request_reload()  # type: ignore[attr-defined]
    wait_until_serving(client, best)
    weaker = register(sessions, settings, 0.2, seed=2)
    response = client.post(f"/models/{weaker}/promote")
    assert response.status_code == 200, response.text
    assert response.json()["active"] is True and response.json()["promoted_at"] is not None
    wait_until_serving(client, weaker, timeout=20)  # far sooner than the 300 s poll
    image = [("file", ("a.png", png_files(1)[0], "image/png"))]
    assert client.post("/predict", files=image).json()["model"]["id"] == weaker
    flags = {m["id"]: m["active"] for m in client.get("/models").json()["items"]}
    assert flags == {best: False, weaker: True}
    client.post(f"/models/{best}/promote")  # the latest promotion wins
    assert client.get(f"/models/{best}").json()["active"] is True


def test_promoting_a_model_whose_file_is_gone_is_409(
    client: TestClient, sessions: sessionmaker[Session], settings: Settings
) -> None:
    model_id = register(sessions, settings, 0.5, seed=1)
    with sessions() as session:
        (settings.artifacts_dir / session.get(RegisteredModel, model_id).path).unlink()  # type: ignore[union-attr]
    assert "missing" in problem(client.post(f"/models/{model_id}/promote"), 409)["detail"]
    assert "no longer exists" in problem(client.get(f"/models/{model_id}/export"), 404)["detail"]


@sqlite_only
def test_export_onnx_runs_in_onnxruntime_and_agrees_with_torch(
    client: TestClient, sessions: sessionmaker[Session], settings: Settings
) -> None:
    ort = pytest.importorskip(
        "onnxruntime", reason="the onnx extra is not installed: pip install 'sweepserve[onnx]'"
    )
    model_id = register(sessions, settings, 0.5, seed=3)
    response = client.get(f"/models/{model_id}/export", params={"format": "onnx"})
    assert response.status_code == 200, response.text
    assert f"model-{model_id}.onnx" in response.headers["content-disposition"]
    session = ort.InferenceSession(response.content, providers=["CPUExecutionProvider"])
    images = synthetic_pixels(5, seed=4)
    onnx_logits = session.run(None, {"images": images.transpose(0, 3, 1, 2).copy()})[0]  # any batch size
    np.testing.assert_allclose(onnx_logits, reference_logits(settings, sessions, model_id, images), atol=1e-4)
    metadata = session.get_modelmeta().custom_metadata_map
    assert json.loads(metadata["classes"])[3] == "cat" and len(json.loads(metadata["mean"])) == 3


@sqlite_only
def test_export_torchscript_loads_with_jit_and_agrees(
    client: TestClient, sessions: sessionmaker[Session], settings: Settings
) -> None:
    model_id = register(sessions, settings, 0.5, seed=5)
    response = client.get(f"/models/{model_id}/export", params={"format": "torchscript"})
    assert response.status_code == 200, response.text
    extra = {"metadata.json": ""}
    scripted = torch.jit.load(io.BytesIO(response.content), _extra_files=extra)
    images = synthetic_pixels(3, seed=6)
    with torch.inference_mode():
        logits = scripted(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()).numpy()
    np.testing.assert_allclose(logits, reference_logits(settings, sessions, model_id, images), atol=1e-4)
    assert json.loads(extra["metadata.json"])["classes"][0] == "airplane"


@sqlite_only
def test_export_state_dict_loads_with_weights_only(
    client: TestClient, sessions: sessionmaker[Session], settings: Settings
) -> None:
    model_id = register(sessions, settings, 0.5, seed=7)
    response = client.get(f"/models/{model_id}/export", params={"format": "state_dict"})
    assert response.status_code == 200, response.text
    exported = torch.load(io.BytesIO(response.content), weights_only=True)
    meta = exported["metadata"]
    net = build_model(TrainConfig.model_validate(meta["config"]), len(meta["classes"]), allow_download=False)
    net.load_state_dict(exported["state_dict"])
    images = synthetic_pixels(3, seed=8)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    with torch.inference_mode():
        logits = predict_logits(net.eval(), x, meta["mean"], meta["std"], tta=False).numpy()
    np.testing.assert_allclose(logits, reference_logits(settings, sessions, model_id, images), atol=1e-5)


def test_export_format_must_be_known(
    client: TestClient, sessions: sessionmaker[Session], settings: Settings
) -> None:
    model_id = register(sessions, settings, 0.5, seed=1)
    assert (
        "format"
        in problem(client.get(f"/models/{model_id}/export", params={"format": "pickle"}), 422)["detail"]
    )


def test_exporting_or_serving_a_damaged_checkpoint_is_a_409_without_paths(
    client: TestClient, sessions: sessionmaker[Session], settings: Settings
) -> None:
    model_id = register_model(sessions, settings.artifacts_dir, val_accuracy=0.5, corrupt=True)
    body = problem(client.get(f"/models/{model_id}/export"), 409)  # the default format: onnx
    assert "cannot be read" in body["detail"]
    served = client.post(
        "/predict", params={"model_id": model_id}, files=[("file", ("a.png", png_files(1)[0]))]
    )
    assert served.status_code == 503
    for answer in (body["detail"], served.text):
        assert str(settings.artifacts_dir) not in answer and "/jobs/" not in answer.replace("\\/", "/")
