"""CLIP-family embeddings of images and text, L2-normalised so cosine is a dot product."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from agents.models.pretrained import PretrainedRole


class ImageEmbedder(PretrainedRole):
    auto_model = "AutoModel"
    auto_processor = "AutoProcessor"

    @property
    def dim(self) -> int:
        return int(self.model.config.projection_dim)

    @torch.inference_mode()
    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        inputs = self.placed(self.processor(images=images, return_tensors="pt"))
        return _normalise(self.model.get_image_features(**inputs))

    @torch.inference_mode()
    def embed_texts(self, texts: list[str]) -> np.ndarray:
        inputs = self.processor(text=texts, return_tensors="pt", padding=True, truncation=True)
        return _normalise(self.model.get_text_features(**self.placed(inputs)))


def _normalise(features) -> np.ndarray:
    if not isinstance(features, torch.Tensor):  # some versions return a model output object
        features = features.pooler_output
    vectors = features.float().cpu().numpy()
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
