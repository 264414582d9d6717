"""Render parameters a job leaves out."""
from __future__ import annotations

from schemas.params import RenderDefaults
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

    @property
    def render_defaults(self) -> RenderDefaults:
        """The RESTYLE_DEFAULT_* render parameters (a pipeline may override some of them)."""
        return RenderDefaults(
            steps=self.default_steps, guidance=self.default_guidance,
            controlnet_scale=self.default_controlnet_scale, width=self.default_width,
            height=self.default_height, negative_prompt=self.default_negative_prompt,
            num_images=self.default_num_images)
