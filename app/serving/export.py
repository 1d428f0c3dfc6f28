"""A registered checkpoint as a portable file: ONNX, TorchScript, or a plain state_dict.

ONNX and TorchScript files take uint8 RGB images N x 3 x 32 x 32 (0..255) and return logits:
the trainer's own normalisation (`ml.augment.normalize`) is inside the graph, and the class
names, mean and std travel in the file's metadata. The state_dict file is what `build_model`
loads (with the metadata beside it).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from app.errors import DamagedCheckpoint, ExportUnavailable
from ml.augment import normalize
from ml.checkpoint import load_for_inference

ExportFormat = Literal["onnx", "torchscript", "state_dict"]
ONNX_OPSET = 17
MEDIA_TYPES: dict[str, str] = {
    "onnx": "application/onnx",
    "torchscript": "application/octet-stream",
    "state_dict": "application/octet-stream",
}
SUFFIXES: dict[str, str] = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "state_dict": ".pt"}


class Normalized(nn.Module):
    """The model behind its input normalisation, so an exported file needs no side information."""

    def __init__(self, model: nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.model, self.mean, self.std = model, tuple(mean), tuple(std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(normalize(images, self.mean, self.std))


def export_model(checkpoint: Path, fmt: ExportFormat, out: io.BufferedIOBase | io.BytesIO) -> None:
    """Write the checkpoint's model in `fmt` to `out` (CPU, fp32)."""
    try:
        model, meta = load_for_inference(checkpoint, "cpu")
    except Exception as exc:  # truncated, overwritten, or not a checkpoint of ours
        raise DamagedCheckpoint(
            f"the model's checkpoint cannot be read ({type(exc).__name__}); it cannot be exported or served"
        ) from exc
    model = model.float().to(memory_format=torch.contiguous_format).eval()
    if fmt == "state_dict":
        torch.save({"state_dict": model.state_dict(), "metadata": _plain_metadata(meta)}, out)
    elif fmt == "torchscript":
        _torchscript(Normalized(model, meta["mean"], meta["std"]), meta, out)
    else:
        _onnx(Normalized(model, meta["mean"], meta["std"]), meta, out)


def _plain_metadata(meta: dict[str, Any]) -> dict[str, Any]:
    keys = ("classes", "mean", "std", "config", "arch", "epoch", "val_accuracy", "test_accuracy")
    return {key: meta[key] for key in keys if key in meta}


def _example() -> torch.Tensor:
    return torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)


def _torchscript(model: nn.Module, meta: dict[str, Any], out: io.BufferedIOBase | io.BytesIO) -> None:
    with torch.inference_mode(False), torch.no_grad():
        traced = torch.jit.trace(model, _example())
    extra = {"metadata.json": json.dumps(_plain_metadata(meta))}
    torch.jit.save(traced, out, _extra_files=extra)


def _onnx(model: nn.Module, meta: dict[str, Any], out: io.BufferedIOBase | io.BytesIO) -> None:
    try:
        import onnx
    except ImportError:
        raise ExportUnavailable("ONNX export needs the onnx package: pip install onnx") from None
    buffer = io.BytesIO()
    # The TorchScript-based exporter: the dynamo one needs onnxscript, and this graph is plain.
    torch.onnx.export(
        model,
        (_example(),),
        buffer,
        dynamo=False,
        input_names=["images"],
        output_names=["logits"],
        dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=ONNX_OPSET,
    )
    proto = onnx.load_from_string(buffer.getvalue())
    onnx.helper.set_model_props(proto, {k: json.dumps(v) for k, v in _plain_metadata(meta).items()})
    out.write(proto.SerializeToString())
