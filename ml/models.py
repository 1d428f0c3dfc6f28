"""ResNet-18 in the two stems the project trains, built on torchvision's ResNet.

`resnet18`: the CIFAR variant (3x3 stride-1 first conv, no max-pool; 32x32 inputs keep
their resolution into layer1), always from scratch. `resnet18_imagenet`: torchvision's
resnet18 unchanged but for the head, optionally with its ImageNet weights.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from urllib.error import URLError

import torch
from torch import nn
from torchvision.models import ResNet18_Weights, resnet18

from ml.config import TrainConfig

FEATURES = 512  # width of ResNet-18's pooled features
GROUPS = 32  # GroupNorm groups: divides every ResNet-18 width (64, 128, 256, 512)
IMAGENET_WEIGHTS = ResNet18_Weights.IMAGENET1K_V1


class WeightsUnavailable(RuntimeError):
    """ImageNet weights were asked for but are neither cached nor downloadable."""


def build_model(cfg: TrainConfig, num_classes: int = 10, allow_download: bool = True) -> nn.Module:
    """The network `cfg` describes, on the CPU, in float32, in train mode."""
    net = resnet18(norm_layer=_norm_layer(cfg.norm))
    if cfg.pretrained:
        net.load_state_dict(imagenet_state_dict(allow_download))
    if cfg.arch == "resnet18":
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision's
        net.maxpool = nn.Identity()
    net.avgpool = GlobalAvgPool()
    net.fc = _head(cfg.hidden_units, num_classes)
    return net


class GlobalAvgPool(nn.Module):
    """AdaptiveAvgPool2d(1) as a mean: same numbers, but its CUDA backward is deterministic
    (adaptive_avg_pool2d's is not, and fails under torch.use_deterministic_algorithms)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3), keepdim=True)


def _norm_layer(norm: str) -> Callable[[int], nn.Module]:
    if norm == "group":
        return functools.partial(nn.GroupNorm, GROUPS)
    return nn.BatchNorm2d


def _head(hidden_units: int, num_classes: int) -> nn.Module:
    if hidden_units == 0:
        return nn.Linear(FEATURES, num_classes)
    return nn.Sequential(
        nn.Linear(FEATURES, hidden_units), nn.ReLU(inplace=True), nn.Linear(hidden_units, num_classes)
    )


def imagenet_weights_path() -> Path:
    """Where torch.hub keeps (and looks for) torchvision's ResNet-18 ImageNet weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(IMAGENET_WEIGHTS.url).name


def imagenet_state_dict(allow_download: bool) -> dict[str, torch.Tensor]:
    path = imagenet_weights_path()
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=True)
    if not allow_download:
        raise WeightsUnavailable(_missing_message(path, "downloads are disabled"))
    try:
        return torch.hub.load_state_dict_from_url(
            IMAGENET_WEIGHTS.url, map_location="cpu", progress=False, check_hash=True, weights_only=True
        )
    except (URLError, OSError, RuntimeError) as exc:
        raise WeightsUnavailable(_missing_message(path, f"the download failed: {exc}")) from exc


def _missing_message(path: Path, why: str) -> str:
    return (
        f"ResNet-18 ImageNet weights are not available ({why}); put the file {path.name} "
        f"(from {IMAGENET_WEIGHTS.url}) at {path}"
    )


def unwrap(model: nn.Module) -> nn.Module:
    """The plain network under DataParallel / DistributedDataParallel / torch.compile wrappers."""
    while True:
        for attribute in ("module", "_orig_mod"):
            inner = getattr(model, attribute, None)
            if isinstance(inner, nn.Module):
                model = inner
                break
        else:
            return model
