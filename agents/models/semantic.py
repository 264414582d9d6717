"""Semantic segmentation (SegFormer, UperNet... through transformers' AutoModel API): a class
index per pixel, for the segmentation ControlNet."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from agents.models.pretrained import PretrainedRole


class SemanticSegmenter(PretrainedRole):
    auto_model = "AutoModelForSemanticSegmentation"
    auto_processor = "AutoImageProcessor"

    @torch.inference_mode()
    def classes(self, image: Image.Image) -> np.ndarray:
        """Height x width class indices for the image."""
        inputs = self.placed(self.processor(images=image, return_tensors="pt"))
        outputs = self.model(**inputs)
        found = self.processor.post_process_semantic_segmentation(
            outputs, target_sizes=[(image.height, image.width)])[0]
        return found.cpu().numpy().astype(np.int64)
