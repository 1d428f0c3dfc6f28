"""Bodies of the /models routes."""

from __future__ import annotations

from typing import Annotated

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
    active: bool = Field(description="the model /predict answers with when no model_id or alias is given")
    aliases: list[str] = Field(
        default_factory=list, description="its names; `champion` is /predict's default"
    )


class ModelList(BaseModel):
    items: list[ModelOut] = Field(description="newest first")


# Never all digits (`/v2/models/{name}` takes an alias or a model id), no separators.
AliasName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,63}$", examples=["candidate"])]


class AliasOut(BaseModel):
    name: str
    model_id: int
    pinned: bool = Field(
        description="champion: set by a user (promotion), not best-on-validation; true for the others"
    )


class AliasList(BaseModel):
    items: list[AliasOut]


class AliasIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_id: Annotated[int, Field(ge=1, le=2**31 - 1)]


class AliasMoveOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    at: UtcDatetime
    alias: str
    from_model: int | None = Field(description="the model it named before (null: it named none)")
    to_model: int | None = Field(description="the model it names since (null: removed)")
    reason: str


class AliasHistory(BaseModel):
    items: list[AliasMoveOut] = Field(description="newest first")
