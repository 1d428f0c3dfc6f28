"""Evaluation forward passes: normalisation, flip TTA, loss and accuracy, mode handling."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ml.augment import normalize
from ml.data import MEAN, STD
from ml.evaluate import evaluate, predict_logits


def _asymmetric_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 30 * 30, 10)
    ).eval()


def test_tta_averages_the_image_and_its_mirror() -> None:
    net = _asymmetric_net()
    x = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    with torch.inference_mode():
        plain = net(normalize(x, MEAN, STD))
        mirrored = net(normalize(x.flip(3), MEAN, STD))
        assert torch.allclose(predict_logits(net, x, MEAN, STD, tta=False), plain, atol=1e-5)
        with_tta = predict_logits(net, x, MEAN, STD, tta=True)
    assert torch.allclose(with_tta, (plain + mirrored) / 2, atol=1e-5)
    assert not torch.allclose(with_tta, plain, atol=1e-3)


def test_evaluate_reports_plain_cross_entropy_and_accuracy_and_restores_train_mode() -> None:
    net = _asymmetric_net().train()
    x = torch.randint(0, 256, (23, 3, 32, 32), dtype=torch.uint8)
    y = torch.randint(0, 10, (23,))
    loss, accuracy = evaluate(net, x, y, batch_size=8, mean=MEAN, std=STD, tta=True)
    assert net.training  # evaluate switched to eval mode and back
    with torch.inference_mode():
        logits = predict_logits(net.eval(), x, MEAN, STD, tta=True)
    assert abs(loss - F.cross_entropy(logits, y).item()) < 1e-4
    assert accuracy == (logits.argmax(1) == y).float().mean().item()


def test_translate_tta_adds_shifted_copies_at_half_the_weight() -> None:
    net = _asymmetric_net()
    x = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)

    def shifted(s: int) -> torch.Tensor:  # the image moved so that out[r, c] = x[r + s, c + s], reflected
        padded = np.pad(x.numpy(), ((0, 0), (0, 0), (2, 2), (2, 2)), mode="reflect")
        return torch.from_numpy(np.ascontiguousarray(padded[:, :, 2 + s : 34 + s, 2 + s : 34 + s]))

    with torch.inference_mode():
        pairs = [predict_logits(net, view, MEAN, STD, tta=True) for view in (x, shifted(2), shifted(-2))]
        with_translate = predict_logits(net, x, MEAN, STD, tta=True, translate_px=2)
        without_mirror = predict_logits(net, x, MEAN, STD, tta=False, translate_px=2)
        singles = [predict_logits(net, view, MEAN, STD, tta=False) for view in (x, shifted(2), shifted(-2))]
    assert torch.allclose(with_translate, 0.5 * pairs[0] + 0.25 * (pairs[1] + pairs[2]), atol=1e-5)
    assert torch.allclose(without_mirror, 0.5 * singles[0] + 0.25 * (singles[1] + singles[2]), atol=1e-5)
    assert not torch.allclose(with_translate, pairs[0], atol=1e-3)


def test_evaluate_applies_translate_tta() -> None:
    net = _asymmetric_net()
    x = torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8)
    y = torch.randint(0, 10, (12,))
    loss, _ = evaluate(net, x, y, batch_size=5, mean=MEAN, std=STD, tta=True, translate_px=1)
    with torch.inference_mode():
        logits = predict_logits(net, x, MEAN, STD, tta=True, translate_px=1)
    assert abs(loss - F.cross_entropy(logits, y).item()) < 1e-4
    assert abs(loss - evaluate(net, x, y, 5, MEAN, STD, tta=True)[0]) > 1e-6
