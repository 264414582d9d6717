"""Generation parameters as users send them, and as the GPU agent receives them once resolved."""
from __future__ import annotations

import random

from pydantic import BaseModel

from schemas.errors import ErrorCode, StageFailure

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


class RenderDefaults(BaseModel):
    """What a render uses for each parameter a job leaves out (the seed is chosen instead)."""

    steps: int
    guidance: float
    controlnet_scale: float
    width: int
    height: int
    negative_prompt: str
    num_images: int


def resolve_render(given: dict, defaults: RenderDefaults, rng: random.Random) -> RenderParams:
    """The one way a job's render parameters are settled: each value the job gives (not None)
    wins over its default; a seed is drawn and recorded when none is given, so the result can
    be reproduced. given's keys are RenderParams names."""
    values = {name: given[name] if given.get(name) is not None else getattr(defaults, name)
              for name in RenderDefaults.model_fields}
    seed = given.get("seed")
    return RenderParams(**values, seed=rng.randint(0, MAX_SEED) if seed is None else seed)


class RenderLimits(BaseModel):
    """The largest render any job may ask for, however its size was derived."""

    max_side: int
    max_pixels: int
    # All the images one request renders together (num_images of them).
    max_request_pixels: int


def bounded_size(width: int, height: int, limits: RenderLimits,
                 num_images: int = 1) -> tuple[int, int]:
    """width x height if within limits (num_images of them together within the request's
    pixel budget), else StageFailure(INVALID_PARAMS) naming the size. A size derived from a
    photo's aspect (one side given) can be absurd: 1408 px wide for a 1 px wide photo is
    1,982,464 px tall, and resizing to it takes a worker's memory with it."""
    if width > limits.max_side or height > limits.max_side or \
            width * height > limits.max_pixels:
        raise StageFailure(ErrorCode.INVALID_PARAMS,
                           f"the render would be {width}x{height} px; at most "
                           f"{limits.max_side} px a side and {limits.max_pixels:,} px in all "
                           f"(RESTYLE_MAX_RENDER_SIDE, RESTYLE_MAX_RENDER_PIXELS): give both "
                           f"width and height, or a smaller one")
    if width * height * num_images > limits.max_request_pixels:
        raise StageFailure(ErrorCode.INVALID_PARAMS,
                           f"{num_images} images of {width}x{height} px are "
                           f"{width * height * num_images:,} px, above the "
                           f"{limits.max_request_pixels:,} one request may render "
                           f"(RESTYLE_MAX_REQUEST_PIXELS): ask for fewer or smaller images")
    return width, height
