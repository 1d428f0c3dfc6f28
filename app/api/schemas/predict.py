"""Bodies of POST /predict."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from app.api.schemas.jobs import Fraction

# A 32x32 grey-blue PNG: the documented example is a request that really succeeds.
EXAMPLE_PNG_BASE64 = (
    "iVBORw0KGgoAAAANSUhEUgAAACAAAAAgCAIAAAD8GO2jAAAAK0lEQVR42u3NQQEAQAQAMC61EEKIeiX4bQWW1ROXXhwTCAQCgUAgEAgE"
    "Wz5yawHkReRdigAAAABJRU5ErkJggg=="
)
PREDICT_JSON_EXAMPLE = {"images": [EXAMPLE_PNG_BASE64]}


class PredictJSON(BaseModel):
    """The JSON form of a request; multipart with `file` parts is the other."""

    model_config = ConfigDict(extra="forbid")

    images: list[str] = Field(
        min_length=1,
        description="base64 PNG or JPEG files (a data: URL prefix is allowed), 32x32 unless resize",
    )


class ModelRef(BaseModel):
    """The model that answered: `app.store.registry.ModelInfo.public()`."""

    id: int
    job_id: int
    trial_id: int
    val_accuracy: Fraction
    test_accuracy: Fraction | None


class Prediction(BaseModel):
    label: str
    class_index: int
    confidence: Fraction = Field(description="probability of `label`")
    probabilities: dict[str, Fraction] = Field(description="every class, by name")


class PredictOut(BaseModel):
    model: ModelRef = Field(description="the model that answered")
    predictions: list[Prediction] = Field(description="one per image, in input order")
