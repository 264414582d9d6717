"""Personalized avatars: the photo check, training defaults (each from diffusers'
train_dreambooth_lora.py or practice; README, "Avatars"), and the adapters a GPU worker keeps."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from schemas.avatars import ResolvedTrainParams, TrainParams
from streams.core.settings.base import SettingsBase


class AvatarSettings(SettingsBase):
    # The photo check: at least this many usable photos of one face (the AWS guidance asks for
    # 10-15); a face smaller than this is too little to learn from; two crops whose 64-bit
    # difference hashes differ in this many bits or fewer are one photo.
    avatar_min_photos: int = Field(8, ge=1)
    avatar_min_face_px: int = Field(64, ge=8)
    avatar_duplicate_distance: int = Field(4, ge=0, le=64)
    avatar_class_word: str = "person"
    # Training defaults (a request's params override each).
    avatar_steps: int = Field(500, ge=1)
    avatar_learning_rate: float = Field(1e-4, gt=0)
    avatar_rank: int = Field(4, ge=1)
    avatar_alpha: float | None = None  # None: the rank (scale 1, as the script does)
    avatar_resolution: int = Field(512, ge=64)
    avatar_batch_size: int = Field(1, ge=1)
    avatar_train_text_encoder: bool = False
    avatar_prior_preservation: bool = True
    avatar_class_images: int = Field(100, ge=1)
    avatar_prior_loss_weight: float = 1.0
    avatar_mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"
    avatar_gradient_checkpointing: bool = False
    avatar_checkpoint_every: int = Field(100, ge=1)
    # Sampling steps for each prior-preservation class image (made once, then reused).
    avatar_class_image_steps: int = Field(30, ge=1)
    # Generation: the adapter's weight when a request gives none; how many adapters a GPU
    # worker keeps loaded on its device, and how much disk its adapter file cache may use.
    avatar_lora_scale: float = Field(1.0, ge=0, le=2)
    avatar_resident_adapters: int = Field(8, ge=1)
    avatar_adapter_cache_mb: int = Field(2048, ge=1)
    # > 0: a new adapter replaces an evicted one in place (diffusers' LoRA hotswap) when both
    # adapt only the UNet, at ranks up to this (smaller ones are padded to it). It keeps the
    # UNet's layers fixed, which a compiled UNet needs; 0 loads each adapter anew.
    avatar_hotswap_rank: int = Field(0, ge=0, le=256)

    def train_params(self, given: TrainParams, seed: int) -> ResolvedTrainParams:
        """Every training value settled: the request's, else the configured default; the seed
        drawn by the caller when none is given."""
        chosen = given.model_dump(exclude_none=True)
        rank = chosen.get("rank", self.avatar_rank)
        defaults = {
            "steps": self.avatar_steps, "learning_rate": self.avatar_learning_rate,
            "rank": rank, "alpha": self.avatar_alpha or rank,
            "resolution": self.avatar_resolution, "batch_size": self.avatar_batch_size,
            "train_text_encoder": self.avatar_train_text_encoder,
            "prior_preservation": self.avatar_prior_preservation,
            "class_images": self.avatar_class_images,
            "prior_loss_weight": self.avatar_prior_loss_weight,
            "mixed_precision": self.avatar_mixed_precision,
            "gradient_checkpointing": self.avatar_gradient_checkpointing,
            "checkpoint_every": self.avatar_checkpoint_every, "seed": seed,
        }
        return ResolvedTrainParams(**{**defaults, **chosen})
