"""Conditioning maps as pure functions: the resize transform (sharp's fit modes, multiples of 8),
canny edges (OpenCV), and a semantic segmentation colored with the palette the segmentation
ControlNet was trained on (ADE20K)."""
from __future__ import annotations

import functools
import importlib.util

import numpy as np
from PIL import Image, ImageOps

from schemas.conditioning import Fit

MULTIPLE = 8  # the latent grid: diffusion sizes are multiples of 8


def target_size(size: tuple[int, int], fit: Fit, width: int | None, height: int | None,
                max_side: int) -> tuple[int, int]:
    """The output size for a photo of `size`: width x height when both are given (inside: the
    photo's aspect within them), one side given keeps the aspect, else the longer side is
    max_side. Always multiples of 8."""
    w, h = size
    if width and height:
        if fit is Fit.INSIDE:
            scale = min(width / w, height / h)
            width, height = w * scale, h * scale
    elif width or height:
        scale = (width / w) if width else (height / h)
        width, height = w * scale, h * scale
    else:
        scale = max_side / max(w, h)
        width, height = w * scale, h * scale
    return (max(MULTIPLE, int(round(width)) // MULTIPLE * MULTIPLE),
            max(MULTIPLE, int(round(height)) // MULTIPLE * MULTIPLE))


def fit_image(image: Image.Image, size: tuple[int, int], fit: Fit) -> Image.Image:
    """The photo at exactly `size`: cover crops the overflow (centred), contain pads with black,
    inside scales (target_size already kept the aspect)."""
    if fit is Fit.COVER:
        return ImageOps.fit(image, size, Image.Resampling.LANCZOS)
    if fit is Fit.CONTAIN:
        return ImageOps.pad(image, size, Image.Resampling.LANCZOS, color=(0, 0, 0))
    return image.resize(size, Image.Resampling.LANCZOS)


def canny_map(image: Image.Image, low: int, high: int) -> Image.Image:
    """White edges on black, 3 channels (what canny ControlNets take)."""
    import cv2

    gray = np.asarray(image.convert("L"))
    edges = cv2.Canny(gray, low, high)
    return Image.fromarray(np.stack([edges] * 3, axis=-1))


@functools.lru_cache(maxsize=1)
def ade20k_palette() -> np.ndarray:
    """The ADE20K class colors (150 x RGB) that lllyasviel/control_v11p_sd15_seg was trained
    on, read from controlnet_aux (the ControlNet preprocessors). Its module is loaded on its own:
    importing the whole package pulls every detector in (seconds)."""
    spec = importlib.util.find_spec("controlnet_aux")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the seg palette needs the controlnet-aux package")
    path = f"{next(iter(spec.submodule_search_locations))}/util.py"
    loader = importlib.util.spec_from_file_location("restyle_controlnet_aux_util", path)
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    return np.asarray(module.ade_palette(), dtype=np.uint8)


def colorize(labels: np.ndarray, palette: np.ndarray) -> Image.Image:
    """A class-index map as the seg ControlNet's colors (indices beyond the palette wrap)."""
    return Image.fromarray(palette[labels % len(palette)])
