"""Bodies of the /models routes."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from app.api.schemas.jobs import Fraction, UtcDatetime


class ModelOut(BaseModel):
    """A servable checkpoint: the best epoch of a finished trial."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    job_id: int
    trial_id: int
    arch: str
    epoch: int = Field(description="the epoch whose weights these are (1-based)")
    val_accuracy: Fraction
    test_accuracy: Fraction | None
    created_at: UtcDatetime
    promoted_at: UtcDatetime | None = Field(description="when a user last promoted it, if ever")
    active: bool = Field(description="the model /predict uses when no model_id is given")


class ModelList(BaseModel):
    items: list[ModelOut] = Field(description="newest first")
