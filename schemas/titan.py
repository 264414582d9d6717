"""The Amazon Titan Image Generator request body (INPAINTING and OUTPAINTING), accepted as is so
teams migrating from Bedrock can send the JSON they already build. Ranges follow the public API
documentation; restyle answers violations with the field and the allowed range."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.background import OutpaintMode, Quality

# The API's documented limits.
TITAN_MAX_TEXT = 512
TITAN_MAX_SIDE = 1408
TITAN_MAX_IMAGE_BYTES = 5 * 1024 * 1024
TITAN_MAX_SEED = 2_147_483_646


class _TitanEditParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(None, min_length=1, max_length=TITAN_MAX_TEXT)
    negativeText: str | None = Field(None, min_length=1, max_length=TITAN_MAX_TEXT)
    image: str = Field(min_length=1, description="base64 PNG or JPEG")
    maskPrompt: str | None = Field(None, min_length=1, max_length=TITAN_MAX_TEXT)
    maskImage: str | None = Field(None, min_length=1, description="base64 PNG or JPEG")
    returnMask: bool = False

    @model_validator(mode="after")
    def _one_mask(self):
        if (self.maskPrompt is None) == (self.maskImage is None):
            raise ValueError("define exactly one of maskPrompt or maskImage")
        return self


class TitanInPaintingParams(_TitanEditParams):
    pass


class TitanOutPaintingParams(_TitanEditParams):
    text: str = Field(min_length=1, max_length=TITAN_MAX_TEXT)  # required for outpainting
    outPaintingMode: OutpaintMode = OutpaintMode.DEFAULT


class TitanGenerationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    numberOfImages: int = Field(1, ge=1, le=5)
    quality: Quality = Quality.STANDARD
    # Titan's output is the input's size for editing tasks; restyle uses these as the
    # generation resolution (and keeps the output at the input's size).
    height: int | None = Field(None, ge=320, le=TITAN_MAX_SIDE)
    width: int | None = Field(None, ge=320, le=TITAN_MAX_SIDE)
    cfgScale: float = Field(8.0, ge=1.1, le=10.0)
    seed: int | None = Field(None, ge=0, le=TITAN_MAX_SEED)


class TitanRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    taskType: Literal["INPAINTING", "OUTPAINTING"]
    inPaintingParams: TitanInPaintingParams | None = None
    outPaintingParams: TitanOutPaintingParams | None = None
    imageGenerationConfig: TitanGenerationConfig = Field(default_factory=TitanGenerationConfig)

    @model_validator(mode="after")
    def _params_for_task(self):
        wanted = "inPaintingParams" if self.taskType == "INPAINTING" else "outPaintingParams"
        other = "outPaintingParams" if wanted == "inPaintingParams" else "inPaintingParams"
        if getattr(self, wanted) is None:
            raise ValueError(f"taskType {self.taskType} needs {wanted}")
        if getattr(self, other) is not None:
            raise ValueError(f"taskType {self.taskType} does not take {other}")
        return self

    @property
    def edit(self) -> _TitanEditParams:
        return self.inPaintingParams or self.outPaintingParams

