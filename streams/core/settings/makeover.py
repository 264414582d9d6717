"""Room makeover: the styles users pick from, what the detector looks for, retrieval and
prompt weights."""
from __future__ import annotations

from pydantic import Field, model_validator

from streams.core.settings.base import SettingsBase

DEFAULT_STYLES: dict[str, str] = {
    "minimalist": "a minimalist interior, clean lines, uncluttered open space, neutral palette, "
    "natural light, simple functional furniture",
    "cozy": "a cozy interior, warm soft lighting, plush textiles, layered throws and cushions, "
    "inviting warm tones",
    "bohemian": "a bohemian interior, eclectic patterns, rattan and macrame, lush plants, "
    "rich earthy colours, layered rugs",
    "modern": "a modern interior, sleek furniture, bold accents, polished surfaces, "
    "contemporary lighting",
    "rustic": "a rustic interior, reclaimed wood, exposed beams, natural stone, "
    "handcrafted furniture, warm earthy tones",
    "industrial": "an industrial interior, exposed brick, raw concrete, black metal fixtures, "
    "Edison bulbs, leather furniture",
    "scandinavian": "a scandinavian interior, light oak wood, white walls, soft wool textiles, "
    "functional minimal furniture, hygge",
}

DEFAULT_NEGATIVE_PROMPT = (
    "lowres, blurry, distorted, deformed furniture, watermark, text, people, bad anatomy"
)

# What the detector looks for in a room unless configured otherwise.
DEFAULT_DETECTION_LABELS: list[str] = [
    "sofa", "armchair", "chair", "coffee table", "dining table", "bed", "lamp", "rug",
    "cushion", "plant", "shelf", "cabinet", "mirror", "painting", "curtains", "vase",
]


class MakeoverSettings(SettingsBase):
    styles: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_STYLES))
    extra_styles: dict[str, str] = Field(default_factory=dict)
    detection_labels: list[str] = Field(default_factory=lambda: list(DEFAULT_DETECTION_LABELS))
    detection_threshold: float = 0.2
    max_detections: int = 8
    retrieve_k: int = 3
    match_score_floor: float = 0.0
    max_products_in_prompt: int = 4
    style_weight: float = 1.0
    product_weight: float = 0.8
    # Photos are analysed (detection, depth) at most this large; results keep full quality.
    analysis_max_side: int = 1024

    @model_validator(mode="after")
    def _merge_styles(self) -> "MakeoverSettings":
        self.styles = {**self.styles, **{k.lower(): v for k, v in self.extra_styles.items()}}
        return self
