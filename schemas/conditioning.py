"""Conditioned generation: an image's structure (canny edges, a segmentation map or depth) and a
prompt in, a new image with that structure out. Jobs come from bucket events (through routing
rules) or straight from `restyle.uploads` (`"pipeline": "condition"`)."""
from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.media import ImageRef
from schemas.params import MAX_SEED, RenderParams


class Conditioning(StrEnum):
    CANNY = "canny"
    SEG = "seg"
    DEPTH = "depth"


class Fit(StrEnum):
    # As in sharp: cover crops to fill the size; contain pads to it; inside scales to fit
    # within it (no crop, no padding).
    COVER = "cover"
    CONTAIN = "contain"
    INSIDE = "inside"


class ConditionParams(BaseModel):
    """What a rule (or an upload) sets; anything left out takes the configured default."""

    model_config = ConfigDict(extra="forbid")

    prompt: str | None = Field(None, min_length=1, max_length=2000)
    negative_prompt: str | None = Field(None, max_length=2000)
    conditioning: Conditioning | None = None
    steps: int | None = Field(None, ge=1, le=150)
    guidance: float | None = Field(None, ge=0.0, le=30.0)
    conditioning_scale: float | None = Field(None, ge=0.0, le=2.0)
    # Target size (multiples of 8 are enforced after fitting), or the longer side.
    width: int | None = Field(None, ge=64, le=2048)
    height: int | None = Field(None, ge=64, le=2048)
    max_side: int | None = Field(None, ge=64, le=2048)
    fit: Fit | None = None
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    num_images: int | None = Field(None, ge=1, le=4)
    canny_low: int | None = Field(None, ge=0, le=1000)
    canny_high: int | None = Field(None, ge=0, le=1000)

    @model_validator(mode="after")
    def _thresholds_in_order(self):
        if self.canny_low is not None and self.canny_high is not None and \
                self.canny_low > self.canny_high:
            raise ValueError("canny_low must not exceed canny_high")
        return self


class BucketRule(BaseModel):
    """Objects created in `bucket` (or any bucket: "*") whose key starts with `prefix` and ends
    with one of `suffixes` run the pipeline with `params`; results go to output_bucket (default:
    the same bucket) under output_prefix."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128)
    bucket: str = Field(min_length=1)
    prefix: str = ""
    suffixes: list[str] = Field(default_factory=lambda: [".jpg", ".jpeg", ".png", ".webp"])
    pipeline: Literal["condition"] = "condition"
    params: ConditionParams = Field(default_factory=ConditionParams)
    output_bucket: str | None = None
    output_prefix: str = Field("generated/", min_length=1)
    # Read the prompt from this object metadata key when present (x-amz-meta-prompt).
    prompt_metadata_key: str | None = "prompt"


class ConditionUpload(BaseModel):
    """`restyle.uploads` with `"pipeline": "condition"`: one image, no bucket rule needed."""

    model_config = ConfigDict(extra="forbid")

    job_id: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
    pipeline: Literal["condition"]
    image: str = Field(min_length=1, max_length=4096)
    params: ConditionParams = Field(default_factory=ConditionParams)
    # Where results go: a prefix URI ending in "/" (default: results/{job_id}/).
    output: str | None = Field(None, pattern=r"/$", max_length=4096)
    tenant: str | None = Field(None, max_length=128)
    schema_version: Literal[1] = 1


class ConditionJob(BaseModel):
    pipeline: Literal["condition"] = "condition"
    job_id: str
    tenant: str | None = None
    image: str
    prompt: str
    conditioning: Conditioning
    fit: Fit
    # Target width, height: one may be None (it follows the photo's aspect); None: max_side.
    size: tuple[int | None, int | None] | None = None
    max_side: int
    canny: tuple[int, int]
    params: RenderParams
    output_prefix: str
    rule: str | None = None
    source: dict = Field(default_factory=dict)  # {"bucket", "key", "etag", "event"}
    control_map: str | None = None
    submitted_at: float
    timings_ms: dict[str, float] = Field(default_factory=dict)
    waits_ms: dict[str, float] = Field(default_factory=dict)
    sent_at: float | None = None


class ConditionResult(BaseModel):
    pipeline: Literal["condition"] = "condition"
    images: list[ImageRef] = Field(default_factory=list)
    control_map: str | None = None
    conditioning: Conditioning | None = None
    prompt: str | None = None
    seed: int | None = None
    rule: str | None = None
    source: dict = Field(default_factory=dict)
    width: int | None = None
    height: int | None = None
    timings_ms: dict[str, float] = Field(default_factory=dict)
    waits_ms: dict[str, float] = Field(default_factory=dict)
