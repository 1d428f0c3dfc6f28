"""Request bodies that steer a job after submission (app.store.steering)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, model_validator

from ml.config import MAX_TRIALS, Strict

EXTEND_EXAMPLE: dict[str, Any] = {"epochs": 40, "top_k": 2}
ADD_EXAMPLE: dict[str, Any] = {"points": [{"lr": 0.05}, {"lr": 0.2, "weight_decay": 1e-4}]}

Epochs = Annotated[int, Field(ge=1, le=1000, description="epochs in all, more than the trials have done")]


class ExtendIn(Strict):
    epochs: Epochs
    top_k: Annotated[int, Field(ge=1, le=MAX_TRIALS)] | None = Field(
        None, description="extend the k succeeded or pruned trials with the best val_accuracy"
    )
    trial_ids: (
        Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=1, max_length=MAX_TRIALS)] | None
    ) = Field(None, description="or these trials")

    @model_validator(mode="after")
    def _one_choice(self) -> ExtendIn:
        if (self.top_k is None) == (self.trial_ids is None):
            raise ValueError("give either top_k or trial_ids")
        return self


class AddTrialsIn(Strict):
    points: Annotated[list[dict[str, Any]], Field(min_length=1, max_length=MAX_TRIALS)] = Field(
        description='train fields and values, one object per trial to add, e.g. {"lr": 0.05}'
    )
