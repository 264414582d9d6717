"""Monocular depth (Depth Anything V2, DPT, ... through transformers) as a ControlNet depth map."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from agents.models.pretrained import PretrainedRole


class DepthEstimator(PretrainedRole):
    auto_model = "AutoModelForDepthEstimation"
    auto_processor = "AutoImageProcessor"

    @torch.inference_mode()
    def estimate(self, image: Image.Image) -> Image.Image:
        """A one-channel 8-bit depth map the size of `image`, near = bright (ControlNet's
        convention)."""
        inputs = self.placed(self.processor(images=image, return_tensors="pt"))
        predicted = self.model(**inputs).predicted_depth
        resized = torch.nn.functional.interpolate(
            predicted.unsqueeze(1).float(), size=image.size[::-1], mode="bicubic",
            align_corners=False,
        )[0, 0].cpu().numpy()
        return depth_to_image(resized)


def depth_to_image(depth: np.ndarray) -> Image.Image:
    low, high = float(depth.min()), float(depth.max())
    scaled = (depth - low) / (high - low) if high > low else np.zeros_like(depth)
    # One channel, what a depth map is: a third of the bytes to encode and store (the
    # ControlNet pipelines read it as RGB).
    return Image.fromarray((scaled * 255.0).clip(0, 255).astype(np.uint8))
