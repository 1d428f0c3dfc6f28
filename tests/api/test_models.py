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


# --- aliases and their history ---------------------------------------------------------------------

IMAGE = [("file", ("a.png", png_files(1)[0], "image/png"))]


def answered_by(client: TestClient, **params: object) -> int:
    response = client.post("/predict", params=params, files=IMAGE)
    assert response.status_code == 200, response.text
    return response.json()["model"]["id"]


def test_a_promotion_pins_champion_until_it_is_unpinned_then_the_best_wins_again(
    client: TestClient, sessions: sessionmaker[Session], settings: Settings
) -> None:
    first = register(sessions, settings, 0.5, seed=1)
    assert answered_by(client) == first
    promoted = register(sessions, settings, 0.3, seed=2)
    assert client.post(f"/models/{promoted}/promote").json()["aliases"] == ["champion"]
    assert answered_by(client) == promoted  # at once: the promotion answers once /predict follows
    better = register(sessions, settings, 0.9, seed=3)  # registered later, better: champion stays pinned
    assert answered_by(client) == promoted
    flags = {m["id"]: (m["active"], m["aliases"]) for m in client.get("/models").json()["items"]}
    assert flags == {first: (False, []), promoted: (True, ["champion"]), better: (False, [])}

    assert client.delete("/models/aliases/champion").status_code == 204  # back to automatic
    assert answered_by(client) == better
    aliases = client.get("/models/aliases").json()["items"]
    assert aliases == [{"name": "champion", "model_id": better, "pinned": False}]

    moves = client.get("/models/history", params={"alias": "champion"}).json()["items"]
    assert [(m["from_model"], m["to_model"]) for m in moves] == [
        (promoted, better),
        (first, promoted),
        (None, first),
    ]
    assert "unpinned" in moves[0]["reason"] and "promoted" in moves[1]["reason"]
    assert "best on validation" in moves[2]["reason"] and moves[0]["at"] >= moves[2]["at"]


def test_user_aliases_name_models_for_predict_and_are_recorded(
    client: TestClient, sessions: sessionmaker[Session], settings: Settings
) -> None:
    best = register(sessions, settings, 0.8, seed=1)
    other = register(sessions, settings, 0.2, seed=2)
    put = client.put("/models/aliases/candidate", json={"model_id": other})
    assert put.status_code == 200 and put.json() == {"name": "candidate", "model_id": other, "pinned": True}
    assert answered_by(client, alias="candidate") == other
    assert answered_by(client, alias="champion") == answered_by(client) == best
    assert client.get(f"/models/{other}").json()["aliases"] == ["candidate"]
    assert client.delete("/models/aliases/candidate").status_code == 204
    assert (
        "candidate"
        in problem(client.post("/predict", params={"alias": "candidate"}, files=IMAGE), 404)["detail"]
    )
    problem(client.delete("/models/aliases/candidate"), 404)
    problem(client.put("/models/aliases/candidate", json={"model_id": 99999}), 404)
    for bad in ("123", "Candidate", "a/b", "x" * 65):
        assert client.put(f"/models/aliases/{bad}", json={"model_id": best}).status_code in (404, 422)
    problem(client.post("/predict", params={"alias": "candidate", "model_id": best}, files=IMAGE), 422)
    moves = client.get("/models/history", params={"alias": "candidate"}).json()["items"]
    assert [(m["from_model"], m["to_model"]) for m in moves] == [(other, None), (None, other)]


def test_active_is_what_predict_answers_with_even_when_the_best_cannot_be_loaded(
    client: TestClient, sessions: sessionmaker[Session], settings: Settings
) -> None:
    good = register(sessions, settings, 0.5, seed=1)
    assert answered_by(client) == good
    broken = register_model(sessions, settings.artifacts_dir, val_accuracy=0.9, corrupt=True)
    flags = {m["id"]: m["active"] for m in client.get("/models").json()["items"]}
    assert flags == {good: True, broken: False}
    assert answered_by(client) == good
    assert "cannot be loaded" in problem(client.post(f"/models/{broken}/promote"), 409)["detail"]
    assert answered_by(client) == good  # a refused promotion moved nothing
