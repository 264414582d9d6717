"""Render parameters a job leaves out, and the largest render any job may ask for."""
from __future__ import annotations

from pydantic import Field

from schemas.params import RenderDefaults, RenderLimits
from streams.core.settings.base import SettingsBase
from streams.core.settings.makeover import DEFAULT_NEGATIVE_PROMPT


class RenderSettings(SettingsBase):
    default_steps: int = 30
    default_guidance: float = 7.5
    default_controlnet_scale: float = 1.0
    default_width: int = 512
    default_height: int = 512
    default_num_images: int = 1
    default_negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    # Every render's size is checked against these, however it was derived (a side given, the
    # other from the photo's aspect), before anything is resized or rendered.
    max_render_side: int = Field(2048, ge=64)
    max_render_pixels: int = Field(2048 * 2048, ge=64 * 64)
    # What one request renders in all (num_images images of its size): a GPU's memory bound.
    max_request_pixels: int = Field(4 * 2048 * 2048, ge=64 * 64)
    # A render's inputs made by a stage (a control map; an image and mask to repaint) and its
    # output images, encoded, travel in the render request or its reply as well as to
    # storage, up to this many bytes in all per message, so that the worker on the other end
    # need not read them back (a storage round trip, on the job's path). The rest travel by
    # URI only. 0: always by URI. Kept well under the broker's message limit
    # (message.max.bytes, 1 MiB by default): base64 adds a third.
    carry_image_max_bytes: int = Field(128 * 1024, ge=0, le=512 * 1024)

    @property
    def render_limits(self) -> RenderLimits:
        return RenderLimits(max_side=self.max_render_side, max_pixels=self.max_render_pixels,
                            max_request_pixels=self.max_request_pixels)

    @property
    def render_defaults(self) -> RenderDefaults:
        """The RESTYLE_DEFAULT_* render parameters (a pipeline may override some of them)."""
        return RenderDefaults(
            steps=self.default_steps, guidance=self.default_guidance,
            controlnet_scale=self.default_controlnet_scale, width=self.default_width,
            height=self.default_height, negative_prompt=self.default_negative_prompt,
            num_images=self.default_num_images)
