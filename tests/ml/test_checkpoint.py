"""Atomic checkpoint writes, weights_only reads, and loading a model for inference."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from ml.checkpoint import inference_checkpoint, load_checkpoint, load_for_inference, save_atomic
from ml.config import TrainConfig
from ml.data import MEAN, STD
from ml.models import build_model
from tests.synthetic import CLASSES


def test_save_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "a" / "ckpt.pt"
    save_atomic({"x": torch.arange(3), "note": "first"}, path)
    save_atomic({"x": torch.arange(5), "note": "second"}, path)
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["x"], torch.arange(5)) and loaded["note"] == "second"
    assert [p.name for p in path.parent.iterdir()] == ["ckpt.pt"]


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    save_atomic({"epoch": 1}, path)
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        save_atomic({"epoch": 2, "bad": lambda: None}, path)  # a lambda cannot be pickled
    assert load_checkpoint(path) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


class Payload:
    pass


def test_load_refuses_anything_but_tensors_and_plain_values(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"obj": Payload()}, path)
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(path)


def test_load_for_inference_rebuilds_the_model_in_eval_mode(tmp_path: Path) -> None:
    cfg = TrainConfig(arch="resnet18_imagenet", hidden_units=16, channels_last=True)
    torch.manual_seed(0)
    net = build_model(cfg).eval()
    for m in net.modules():  # running stats other than the defaults, so loading them matters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
    path = tmp_path / "best.pt"
    save_atomic(inference_checkpoint(net.state_dict(), cfg, CLASSES, job_id=3, epoch=2), path)

    model, meta = load_for_inference(path, "cpu")
    assert not model.training
    assert meta["classes"] == list(CLASSES) and meta["mean"] == list(MEAN) and meta["std"] == list(STD)
    assert meta["config"]["hidden_units"] == 16 and meta["job_id"] == 3 and meta["epoch"] == 2
    x = torch.randn(3, 3, 32, 32)
    with torch.inference_mode():
        assert torch.allclose(model(x), net(x), atol=1e-5)


def test_pretrained_config_loads_without_fetching_imagenet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-hub"))  # no ImageNet file anywhere
    cfg = TrainConfig(arch="resnet18_imagenet", pretrained=True)
    net = build_model(cfg.model_copy(update={"pretrained": False}))
    save_atomic(inference_checkpoint(net.state_dict(), cfg, CLASSES), tmp_path / "best.pt")
    model, meta = load_for_inference(tmp_path / "best.pt", torch.device("cpu"))
    assert meta["config"]["pretrained"] is True
    assert torch.equal(model.conv1.weight, net.conv1.weight)


def test_a_foreign_file_is_a_clear_error(tmp_path: Path) -> None:
    save_atomic({"weights": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a model checkpoint"):
        load_for_inference(tmp_path / "other.pt", "cpu")
