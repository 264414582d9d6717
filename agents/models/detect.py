"""Open-vocabulary detection (OWLv2 or Grounding DINO through transformers' zero-shot API)."""
from __future__ import annotations

import torch
from PIL import Image

from agents.models.pretrained import PretrainedRole
from schemas import Box, Detection


class Detector(PretrainedRole):
    """Finds the configured labels in an image, with boxes in the image's pixel coordinates."""

    auto_model = "AutoModelForZeroShotObjectDetection"
    auto_processor = "AutoProcessor"
    # The fast (torchvision) image processor: the slow OWLv2 one takes a minute on a photo.
    processor_options = {"use_fast": True}

    @torch.inference_mode()
    def detect(self, image: Image.Image, labels: list[str], threshold: float,
               max_detections: int) -> list[Detection]:
        if not labels:
            return []
        prepared, scale = _shrink_for(image, _input_side(self.processor))
        # Truncated to the text encoder's length (16 tokens for OWL-ViT): a longer label used to
        # crash the model with a tensor size mismatch.
        inputs = self.processor(text=[labels], images=prepared, return_tensors="pt",
                                padding=True, truncation=True)
        outputs = self.model(**self.placed(inputs))
        # OWLv2 pads the image to a square before resizing: the boxes then refer to the padded
        # square, so post-process against the square side and clip to the real image.
        side = max(prepared.size)
        target = [(side, side)] if _pads_to_square(self.processor) else [prepared.size[::-1]]
        found = self.processor.post_process_grounded_object_detection(
            outputs, threshold=threshold, target_sizes=target, text_labels=[labels]
        )[0]
        detections = []
        for score, label, box in zip(found["scores"], found["text_labels"], found["boxes"]):
            x0, y0, x1, y1 = (float(v) * scale for v in box.tolist())
            clipped = Box(x0=max(0.0, x0), y0=max(0.0, y0),
                          x1=min(float(image.width), x1), y1=min(float(image.height), y1))
            if clipped.area <= 1.0:
                continue
            detections.append(Detection(label=str(label), score=float(score), box=clipped))
        detections.sort(key=lambda d: d.score, reverse=True)
        return detections[:max_detections]


def _pads_to_square(processor) -> bool:
    return type(processor.image_processor).__name__.startswith("Owlv2")


def _input_side(processor) -> int:
    size = processor.image_processor.size
    return int(max(size.get("height", 0), size.get("width", 0), size.get("shortest_edge", 0),
                   size.get("longest_edge", 0)) or 1024)


def _shrink_for(image: Image.Image, input_side: int) -> tuple[Image.Image, float]:
    """Downscale very large photos with PIL before the processor: its anti-aliased resize of a
    multi-megapixel photo costs far more than the model. Returns the image and the factor that
    maps its coordinates back to the original."""
    limit = 2 * input_side
    if max(image.size) <= limit:
        return image, 1.0
    scale = max(image.size) / limit
    size = (max(1, round(image.width / scale)), max(1, round(image.height / scale)))
    return image.resize(size, Image.Resampling.LANCZOS), image.width / size[0]


def rescale_detections(detections: list[Detection], factor: float) -> list[Detection]:
    """Boxes found on a downscaled copy, in the original image's coordinates."""
    if factor == 1.0:
        return detections
    return [d.model_copy(update={"box": d.box.model_copy(update={
        "x0": d.box.x0 * factor, "y0": d.box.y0 * factor,
        "x1": d.box.x1 * factor, "y1": d.box.y1 * factor})}) for d in detections]
