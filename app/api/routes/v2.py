"""The Open Inference Protocol (KServe v2 / Triton HTTP) beside /predict, on the same batcher.

    GET  /v2/health/live, /v2/health/ready          probes (no key needed, like /healthz)
    GET  /v2                                        server metadata
    GET  /v2/models/{name}, /v2/models/{name}/ready model metadata, readiness
    POST /v2/models/{name}/infer                    JSON tensors (and the binary tensor extension)

`{name}` is an alias (`champion`: what /predict serves) or a model id. The one input is `images`,
UINT8 [-1, 32, 32, 3] (RGB, NHWC, as CIFAR-10 stores them); the one output `probabilities`, FP32
[-1, 10], in the class order the metadata lists (`parameters.classes`). Errors are problem+json
bodies that also carry the protocol's `error` field, so Triton clients show the message.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app.api.deps import MAX_ID, PredictorDep
from app.api.problems import Problem, problem_response
from app.api.routes.health import schema_check
from app.api.schemas import problem_responses
from app.errors import ServiceError
from app.serving.imaging import IMAGE_SIZE
from app.serving.inference import LoadedModel
from app.serving.predictor import Predictor

INPUT, OUTPUT = "images", "probabilities"
INPUT_SHAPE = [-1, IMAGE_SIZE, IMAGE_SIZE, 3]
BINARY_HEADER = "inference-header-content-length"  # the binary tensor extension's JSON length

health = APIRouter(prefix="/v2/health", tags=["inference protocol v2"])
router = APIRouter(prefix="/v2", tags=["inference protocol v2"])


@health.get("/live", summary="The server is up")
async def live() -> dict[str, bool]:
    return {"live": True}


@health.get("/ready", summary="Ready: database and schema, as /readyz", responses=problem_responses(503))
def ready(request: Request) -> JSONResponse:
    # As /readyz: no model yet does not make the server unready (GET /v2/models/{name}/ready says
    # whether a model can answer).
    checks = schema_check(request)
    if checks["database"] != "ok" or checks["schema"] != "at head":
        detail = "the database is unreachable or its schema is not at head"
        return problem_response(503, "Not ready", detail, ready=False, error=detail)
    return JSONResponse({"ready": True})


@router.get("", summary="Server metadata")
async def server_metadata() -> dict[str, Any]:
    return {"name": "sweepserve", "version": "1", "extensions": ["binary_tensor_data"]}


@router.get("/models/{name}", summary="Model metadata: its input, output and class names")
async def model_metadata(name: str, predictor: PredictorDep) -> JSONResponse:
    try:
        model = await _model(predictor, name)
    except (ServiceError, Problem) as exc:
        return _error(exc)
    return JSONResponse(
        {
            "name": name,
            "versions": ["1"],
            "platform": "pytorch_torchscript",
            "inputs": [{"name": INPUT, "datatype": "UINT8", "shape": INPUT_SHAPE}],
            "outputs": [{"name": OUTPUT, "datatype": "FP32", "shape": [-1, len(model.classes)]}],
            "parameters": {"model_id": model.info.id, "classes": list(model.classes)},
        }
    )


@router.get("/models/{name}/ready", summary="The model can answer")
async def model_ready(name: str, predictor: PredictorDep) -> JSONResponse:
    try:
        await _model(predictor, name)
    except (ServiceError, Problem) as exc:
        return _error(exc)
    return JSONResponse({"name": name, "ready": True})


@router.post("/models/{name}/infer", summary="Class probabilities of uint8 images, batched with /predict")
async def infer(name: str, request: Request, predictor: PredictorDep) -> JSONResponse:
    try:
        body = await request.body()
        header_length = request.headers.get(BINARY_HEADER)
        settings = request.app.state.settings
        parsed = await asyncio.to_thread(_parse, body, header_length, settings.max_images_per_request)
        model = await _model(predictor, name)
        probs = await predictor.infer(model, parsed.images)
    except (ServiceError, Problem) as exc:
        return _error(exc)
    answer: dict[str, Any] = {
        "model_name": name,
        "model_version": "1",
        "outputs": [
            {"name": OUTPUT, "datatype": "FP32", "shape": list(probs.shape), "data": probs.ravel().tolist()}
        ],
        "parameters": {"model_id": model.info.id},
    }
    if parsed.id is not None:
        answer["id"] = parsed.id
    return JSONResponse(answer)


async def _model(predictor: Predictor, name: str) -> LoadedModel:
    if name.isascii() and name.isdigit():
        model_id = int(name)
        if not 1 <= model_id <= MAX_ID:
            raise Problem(404, "Not found", f"model {name} does not exist")
        return await predictor.resolve(model_id=model_id)
    return await predictor.resolve(alias=name)


class _Request:
    def __init__(self, images: np.ndarray, request_id: str | None) -> None:
        self.images, self.id = images, request_id


def _parse(body: bytes, header_length: str | None, max_images: int) -> _Request:
    """The `images` tensor of an inference request, validated; 4xx problems otherwise."""
    binary = b""
    if header_length is not None:
        if not (header_length.isascii() and header_length.isdigit()) or int(header_length) > len(body):
            raise Problem(400, "Bad request", f"{BINARY_HEADER} does not fit the body")
        body, binary = body[: int(header_length)], body[int(header_length) :]
    try:
        request = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise Problem(400, "Bad request", "the body is not JSON") from None
    inputs = request.get("inputs") if isinstance(request, dict) else None
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise Problem(400, "Bad request", f"send exactly one input, {INPUT!r}")
    tensor = inputs[0]
    if tensor.get("name") != INPUT or tensor.get("datatype") != "UINT8":
        raise Problem(400, "Bad request", f"the input must be {INPUT!r} with datatype UINT8")
    shape = tensor.get("shape")
    if not (isinstance(shape, list) and len(shape) == 4 and shape[1:] == INPUT_SHAPE[1:]):
        raise Problem(400, "Bad request", f"the input's shape must be [N, {IMAGE_SIZE}, {IMAGE_SIZE}, 3]")
    count = shape[0]
    if not isinstance(count, int) or not 1 <= count <= max_images:
        raise Problem(400, "Bad request", f"N must be 1..{max_images} images per request")
    images = _tensor_data(tensor, binary, count * IMAGE_SIZE * IMAGE_SIZE * 3)
    request_id = request.get("id")
    return _Request(images.reshape(shape), request_id if isinstance(request_id, str) else None)


def _tensor_data(tensor: dict[str, Any], binary: bytes, size: int) -> np.ndarray:
    parameters = tensor.get("parameters")
    if isinstance(parameters, dict) and "binary_data_size" in parameters:
        if parameters["binary_data_size"] != size or len(binary) != size:
            raise Problem(400, "Bad request", f"the binary input must be {size} bytes")
        return np.frombuffer(binary, dtype=np.uint8).copy()
    data = tensor.get("data")
    if not isinstance(data, list):
        raise Problem(400, "Bad request", "the input has no `data`")
    try:
        values = np.asarray(data, dtype=np.int64).ravel()
    except (ValueError, TypeError, OverflowError):
        raise Problem(400, "Bad request", "the input's data must be integers 0..255") from None
    if values.size != size or (values.size and (values.min() < 0 or values.max() > 255)):
        raise Problem(400, "Bad request", f"the input's data must be {size} integers 0..255")
    return values.astype(np.uint8)


def _error(exc: ServiceError | Problem) -> JSONResponse:
    if isinstance(exc, Problem):
        status, title, detail, headers = exc.status, exc.title, exc.detail, exc.headers
    else:
        status, title, detail, headers = exc.status, exc.title, str(exc), exc.headers
    return problem_response(status, title, detail, headers, error=detail)
