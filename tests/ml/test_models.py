"""The two ResNet-18 stems, heads, norms, and ImageNet weights from the torch hub cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.models import resnet18

from ml.config import TrainConfig
from ml.models import WeightsUnavailable, build_model, imagenet_weights_path, unwrap


def _forward(net: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return net.eval()(torch.randn(2, 3, 32, 32))


def test_cifar_stem_keeps_the_resolution() -> None:
    net = build_model(TrainConfig(arch="resnet18"))
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    assert isinstance(net.maxpool, nn.Identity)
    shapes: list[torch.Size] = []
    net.layer1.register_forward_hook(lambda module, inputs, output: shapes.append(output.shape) and None)
    assert _forward(net).shape == (2, 10)
    assert shapes[0][-2:] == (32, 32)


def test_imagenet_stem_is_torchvisions() -> None:
    net = build_model(TrainConfig(arch="resnet18_imagenet"), num_classes=7)
    assert net.conv1.kernel_size == (7, 7) and net.conv1.stride == (2, 2)
    assert isinstance(net.maxpool, nn.MaxPool2d)
    assert _forward(net).shape == (2, 7)
    assert sum(p.numel() for p in net.parameters()) == sum(
        p.numel() for p in resnet18(num_classes=7).parameters()
    )


def test_hidden_units_make_a_two_layer_head() -> None:
    plain = build_model(TrainConfig(arch="resnet18_imagenet"))
    assert isinstance(plain.fc, nn.Linear) and (plain.fc.in_features, plain.fc.out_features) == (512, 10)
    mlp = build_model(TrainConfig(arch="resnet18_imagenet", hidden_units=64))
    assert [type(m) for m in mlp.fc] == [nn.Linear, nn.ReLU, nn.Linear]
    assert (mlp.fc[0].in_features, mlp.fc[0].out_features, mlp.fc[2].out_features) == (512, 64, 10)
    assert _forward(mlp).shape == (2, 10)


def test_group_norm_replaces_every_batch_norm() -> None:
    net = build_model(TrainConfig(arch="resnet18", norm="group"))
    norms = [m for m in net.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert all(m.num_channels % m.num_groups == 0 for m in norms)
    assert _forward(net).shape == (2, 10)


def test_same_seed_same_initial_weights() -> None:
    torch.manual_seed(3)
    a = build_model(TrainConfig(arch="resnet18"))
    torch.manual_seed(3)
    b = build_model(TrainConfig(arch="resnet18"))
    assert all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


def test_pretrained_weights_come_from_the_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = imagenet_weights_path()
    assert path == tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    torch.manual_seed(11)
    weights = resnet18().state_dict()  # stands in for the ImageNet file: same names and shapes
    path.parent.mkdir(parents=True)
    torch.save(weights, path)
    net = build_model(TrainConfig(arch="resnet18_imagenet", pretrained=True), allow_download=False)
    assert torch.equal(net.conv1.weight, weights["conv1.weight"])
    assert torch.equal(net.layer4[1].bn2.running_var, weights["layer4.1.bn2.running_var"])
    assert net.fc.out_features == 10  # the ImageNet head is replaced


def test_missing_pretrained_weights_say_where_to_put_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cfg = TrainConfig(arch="resnet18_imagenet", pretrained=True)
    with pytest.raises(WeightsUnavailable) as err:
        build_model(cfg, allow_download=False)
    assert str(tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in str(err.value)


def test_unwrap_sees_through_data_parallel() -> None:
    net = build_model(TrainConfig(arch="resnet18_imagenet"))
    assert unwrap(nn.DataParallel(net)) is net
    assert unwrap(net) is net


def test_global_pool_matches_torchvisions_adaptive_pool() -> None:
    torch.manual_seed(0)
    ours = build_model(TrainConfig(arch="resnet18_imagenet")).eval()
    reference = resnet18(num_classes=10).eval()
    reference.load_state_dict(ours.state_dict())  # same weights, torchvision's AdaptiveAvgPool2d
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(ours(x), reference(x), atol=1e-5)
