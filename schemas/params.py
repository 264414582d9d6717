"""Generation parameters as users send them, and as the GPU agent receives them once resolved."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_SEED = 2**32 - 1


def _multiple_of_8(value: int | None) -> int | None:
    if value is not None and value % 8:
        raise ValueError(f"must be a multiple of 8 (got {value})")
    return value


class MakeoverParams(BaseModel):
    """Optional knobs of a room makeover; anything left out takes the configured default."""

    model_config = ConfigDict(extra="forbid")

    steps: int | None = Field(None, ge=1, le=150)
    guidance: float | None = Field(None, ge=0.0, le=30.0)
    controlnet_scale: float | None = Field(None, ge=0.0, le=2.0)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    width: int | None = Field(None, ge=64, le=2048)
    height: int | None = Field(None, ge=64, le=2048)
    negative_prompt: str | None = Field(None, max_length=2000)
    num_images: int | None = Field(None, ge=1, le=4)

    _check_width = field_validator("width")(lambda cls, v: _multiple_of_8(v))
    _check_height = field_validator("height")(lambda cls, v: _multiple_of_8(v))


class RenderParams(BaseModel):
    """Fully resolved parameters: every value set, the seed chosen, so a result can be reproduced."""

    steps: int
    guidance: float
    controlnet_scale: float
    seed: int
    width: int
    height: int
    negative_prompt: str
    num_images: int
