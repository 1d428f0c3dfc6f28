"""POST /predict: images in (multipart `file` parts or JSON base64), class probabilities out."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from app.api.deps import MAX_ID, PredictorDep, SettingsDep
from app.api.problems import Problem
from app.api.schemas import problem_responses
from app.api.schemas.predict import PREDICT_JSON_EXAMPLE, PredictJSON, PredictOut
from app.serving.imaging import decode_base64
from app.settings import Settings

router = APIRouter(tags=["predict"])

MAX_FORM_FIELDS = 16  # non-file parts tolerated (and ignored) in a multipart body
FILE_FIELD = "file"

_REQUEST_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"file": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                "required": ["file"],
            },
            "example": {"file": ["<a 32x32 PNG or JPEG file>"]},
        },
        "application/json": {"schema": PredictJSON.model_json_schema(), "example": PREDICT_JSON_EXAMPLE},
    },
}


@router.post(
    "/predict",
    response_model=PredictOut,
    responses=problem_responses(404, 413, 415, 422, 503),
    openapi_extra={"requestBody": _REQUEST_BODY},
    summary="Classify 32x32 PNG/JPEG images with the active model (or ?model_id=)",
)
async def predict(
    request: Request,
    predictor: PredictorDep,
    settings: SettingsDep,
    model_id: Annotated[int | None, Query(ge=1, le=MAX_ID, description="pin a registered model")] = None,
    alias: Annotated[
        str | None,
        Query(pattern=r"^[a-z][a-z0-9_-]{0,63}$", description="the model an alias names (default: champion)"),
    ] = None,
    resize: Annotated[bool, Query(description="scale other sizes to 32x32 instead of refusing them")] = False,
    tta: Annotated[
        Literal["none", "flip"], Query(description="flip: average with the mirror image")
    ] = "none",
) -> dict[str, Any]:
    # ImageRejected, Overloaded and NoModel are answered by the problem handlers (app.errors).
    if model_id is not None and alias is not None:
        raise Problem(422, "Invalid request", "pass model_id or alias, not both")
    images = await read_images(request, settings)
    return await predictor.predict(images, model_id=model_id, alias=alias, resize=resize, tta=tta == "flip")


async def read_images(request: Request, settings: Settings) -> list[bytes]:
    """The image files of a request, within the body, part and image-count limits."""
    body = await request.body()  # app.api.limits caps its size for every route
    if not body:
        raise Problem(422, "Empty body", 'send images as multipart `file` parts or JSON {"images": [...]}')
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":  # the parser enforces the image count
        return await _multipart_files(request, body, settings.max_images_per_request)
    if content_type == "application/json" or content_type.endswith("+json"):
        # Parsing megabytes of JSON and base64 must not stall the event loop.
        return await asyncio.to_thread(_json_images, body, settings.max_images_per_request)
    raise Problem(415, "Unsupported body", f"Content-Type {content_type or 'none'}: use multipart or JSON")


async def _multipart_files(request: Request, body: bytes, max_images: int) -> list[bytes]:
    async def replay() -> Any:
        yield body

    parser = MultiPartParser(request.headers, replay(), max_files=max_images, max_fields=MAX_FORM_FIELDS)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        if str(exc).startswith("Too many"):
            raise Problem(413, "Too many parts", f"{exc} At most {max_images} images per request.") from None
        raise Problem(422, "Malformed multipart body", str(exc)) from None
    try:
        uploads = [part for part in form.getlist(FILE_FIELD) if isinstance(part, UploadFile)]
        if not uploads:
            raise Problem(422, "No images", f"the multipart body has no `{FILE_FIELD}` file parts")
        return [await upload.read() for upload in uploads]
    finally:
        await form.close()


def _json_images(body: bytes, max_images: int) -> list[bytes]:
    try:
        texts = PredictJSON.model_validate_json(body).images
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None
    if len(texts) > max_images:
        raise Problem(413, "Too many images", f"{len(texts)} images sent; at most {max_images} per request")
    return [decode_base64(text, index) for index, text in enumerate(texts)]
