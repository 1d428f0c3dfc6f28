"""The serving graph: a traced, frozen copy of the trained module that answers as the module does."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from app.serving.inference import serving_graph
from ml.config import TrainConfig
from ml.evaluate import predict_logits
from ml.models import build_model

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
CPU = torch.device("cpu")


def _trained_looking(arch: str) -> nn.Module:
    """A model whose BatchNorm layers hold non-trivial statistics, as after training."""
    torch.manual_seed(0)
    model = build_model(TrainConfig(arch=arch)).eval()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
    return model.to(memory_format=torch.channels_last)


@pytest.mark.parametrize("batch", [1, 5, 33])  # traced with 8 images: any batch size must run
def test_the_frozen_graph_answers_as_the_eager_model_at_any_batch_size(batch: int) -> None:
    model = _trained_looking("resnet18_imagenet")
    graph = serving_graph(model, MEAN, STD, "fp32", CPU)
    assert isinstance(graph, torch.jit.ScriptModule)
    images = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8)
    with torch.inference_mode():
        expected = predict_logits(model, images, MEAN, STD, True, True, "fp32")
        served = predict_logits(graph, images, MEAN, STD, True, True, "fp32")
    torch.testing.assert_close(served, expected, rtol=1e-4, atol=1e-4)


def test_bf16_graph_stays_within_bf16_rounding_and_keeps_the_answers() -> None:
    model = _trained_looking("resnet18_imagenet")
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    with torch.inference_mode():
        expected = predict_logits(model, images, MEAN, STD, False, True, "fp32")
        graph = serving_graph(model, MEAN, STD, "bf16", CPU)
        served = predict_logits(graph, images, MEAN, STD, False, True, "bf16")
    assert float((served - expected).abs().max()) < 0.1  # bf16 keeps 8 bits of mantissa
    assert served.dtype == torch.float32


def test_a_module_the_tracer_cannot_follow_is_served_eagerly() -> None:
    class Untraceable(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("cannot trace this")

    module = Untraceable()
    assert serving_graph(module, MEAN, STD, "fp32", CPU) is module
