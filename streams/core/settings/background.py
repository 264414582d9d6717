"""Background replacement: masks, generation defaults, batch outcomes."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from streams.core.settings.base import SettingsBase


class BackgroundSettings(SettingsBase):
    # Labels the detector looks for when a batch names no mask (no mask prompt, no mask image).
    background_labels: list[str] = Field(default_factory=lambda: [
        "person", "dog", "cat", "bird", "horse", "car", "bus", "bicycle", "motorcycle",
        "bottle", "bag", "shoe", "chair", "product"])
    # How boxes become pixel masks: SAM (box prompts), u2netp (salient object in each box) or
    # the boxes themselves.
    mask_refiner: Literal["sam", "u2netp", "box"] = "sam"
    # A photo in which the detector finds none of the default labels keeps its salient object
    # (u2netp) instead of failing. A batch that names its labels fails the image instead.
    salient_fallback: bool = True
    # Generation resolution when the batch gives none: the photo's aspect within this side.
    background_max_side: int = 512
    # DEFAULT mode blends across a band this share of the photo's shorter side.
    default_feather_share: float = 0.015
    # Steps per Titan-style quality level (a batch's params.steps overrides).
    quality_steps: dict[str, int] = Field(default_factory=lambda: {"standard": 25,
                                                                    "premium": 50})
    default_cfg_scale: float = 8.0
    # The prompt of a Titan INPAINTING request that sends none: fill with the surroundings.
    inpaint_default_prompt: str = "background, seamless continuation of the surroundings"
    default_outpaint_mode: Literal["DEFAULT", "PRECISE"] = "DEFAULT"
    # Share of a batch's images that may fail while the batch still succeeds (0: none may).
    tolerated_failure_pct: float = 0.0
    # Presigned links in a batch.completed notification (the report lists every output).
    notification_max_links: int = 100
