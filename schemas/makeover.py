"""Room makeover: the upload, the job as it moves between stage topics, and the result."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.ids import JOB_ID_PATTERN, SCHEMA_VERSION
from schemas.media import Detection, ImageRef, ProductMatch
from schemas.params import MAX_SEED, RenderParams, multiple_of_8


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

    _check_width = field_validator("width")(lambda cls, v: multiple_of_8(v))
    _check_height = field_validator("height")(lambda cls, v: multiple_of_8(v))


class MakeoverUpload(BaseModel):
    """A room makeover as upstream systems publish it on `restyle.uploads`."""

    model_config = ConfigDict(extra="forbid")

    job_id: str | None = Field(None, pattern=JOB_ID_PATTERN)
    pipeline: Literal["room_makeover"]
    image: str = Field(min_length=1, max_length=4096)
    style: str = Field(min_length=1, max_length=64)
    params: MakeoverParams = Field(default_factory=MakeoverParams)
    tenant: str | None = Field(None, max_length=128)
    schema_version: Literal[1] = SCHEMA_VERSION


class MakeoverJob(BaseModel):
    """The room makeover as it moves between stage topics; each stage fills in its part."""

    pipeline: Literal["room_makeover"] = "room_makeover"
    job_id: str
    tenant: str | None = None
    style: str
    image: str
    params: RenderParams
    submitted_at: float
    detections: list[Detection] = Field(default_factory=list)
    matches: list[ProductMatch] = Field(default_factory=list)
    prompt: str | None = None
    depth_map: str | None = None
    images: list[str] = Field(default_factory=list)
    products: list[ProductMatch] = Field(default_factory=list)
    timings_ms: dict[str, float] = Field(default_factory=dict)
    # How long the job waited on each stage's topic (sent → picked up), from sent_at.
    waits_ms: dict[str, float] = Field(default_factory=dict)
    sent_at: float | None = None


class MakeoverResult(BaseModel):
    pipeline: Literal["room_makeover"] = "room_makeover"
    images: list[ImageRef] = Field(default_factory=list)
    products: list[ProductMatch] = Field(default_factory=list)
    seed: int | None = None
    prompt: str | None = None
    style: str | None = None
    depth_map: str | None = None
    detected: list[ProductMatch] = Field(default_factory=list)
    timings_ms: dict[str, float] = Field(default_factory=dict)
    waits_ms: dict[str, float] = Field(default_factory=dict)
