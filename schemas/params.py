"""Generation parameters as users send them, and as the GPU agent receives them once resolved."""
from __future__ import annotations

from pydantic import BaseModel

MAX_SEED = 2**32 - 1


def multiple_of_8(value: int | None) -> int | None:
    if value is not None and value % 8:
        raise ValueError(f"must be a multiple of 8 (got {value})")
    return value


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
