"""Keep-masks as pure functions: from detections and a segmenter, from a user's mask image, and
the two ways a generated background is put behind the kept pixels (PRECISE and DEFAULT).

A keep-mask is an "L" image the size of the photo: 255 = keep the photo's pixel, 0 = paint anew.
Diffusers' inpainting pipelines take the opposite (white = repaint): `repaint_mask` converts.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from schemas import Detection, ErrorCode, StageFailure

# A user's mask may be anti-aliased at its edges, not a soft matte: at most this share of its
# pixels may be grey (neither near black nor near white).
MAX_GREY_SHARE = 0.02
_DARK, _LIGHT = 32, 224


def keep_mask_from_mask_image(mask: Image.Image, size: tuple[int, int],
                              name: str = "mask image") -> Image.Image:
    """A user's keep-mask, validated: the photo's size and (nearly) black and white."""
    if mask.size != size:
        raise StageFailure(ErrorCode.INVALID_MASK,
                           f"{name} is {mask.size[0]}x{mask.size[1]} but the image is "
                           f"{size[0]}x{size[1]}; a mask must be the image's size")
    values = np.asarray(mask.convert("L"))
    grey = float(((values > _DARK) & (values < _LIGHT)).mean())
    if grey > MAX_GREY_SHARE:
        raise StageFailure(ErrorCode.INVALID_MASK,
                           f"{name} is not black and white: {grey:.0%} of its pixels are grey "
                           f"(at most {MAX_GREY_SHARE:.0%} allowed; white = keep, black = "
                           f"replace)")
    return _to_image(values >= 128)


def keep_mask_from_detections(size: tuple[int, int], detections: list[Detection],
                              regions: list[np.ndarray] | None = None) -> Image.Image:
    """The union of the detections' pixel masks (regions, aligned with detections: bool arrays
    of the image's shape), or of their boxes where there are none. A pixel mask is clipped to
    its box: a segmenter's stray pixels elsewhere are not the named object."""
    keep = np.zeros((size[1], size[0]), dtype=bool)
    for n, detection in enumerate(detections):
        box = box_region(size, detection.box)
        region = regions[n] if regions is not None and n < len(regions) else None
        keep |= box if region is None else (region & box)
    return _to_image(keep)


def box_region(size: tuple[int, int], box) -> np.ndarray:
    region = np.zeros((size[1], size[0]), dtype=bool)
    x0, y0 = max(0, int(box.x0)), max(0, int(box.y0))
    x1, y1 = min(size[0], int(np.ceil(box.x1))), min(size[1], int(np.ceil(box.y1)))
    region[y0:y1, x0:x1] = True
    return region


def invert(mask: Image.Image) -> Image.Image:
    return _to_image(~as_bool(mask))


def kept_share(mask: Image.Image) -> float:
    return float(as_bool(mask).mean())


def check_usable(keep: Image.Image, what: str) -> None:
    """A keep-mask that keeps nothing or everything is a failed job with its reason, not a
    silent copy of the photo or a photo-less background."""
    share = kept_share(keep)
    if share == 0.0:
        raise StageFailure(ErrorCode.MASK_EMPTY, f"the mask keeps nothing: {what}")
    if share == 1.0:
        raise StageFailure(ErrorCode.MASK_EMPTY,
                           f"the mask keeps the whole image, so there is no background to "
                           f"replace: {what}")


def feather_px(size: tuple[int, int], share: float) -> int:
    """The DEFAULT mode's blend band, as a share of the photo's shorter side (at least 2 px)."""
    return max(2, round(min(size) * share))


def repaint_mask(keep: Image.Image, mode: str, feather: int) -> Image.Image:
    """What the inpainting model may repaint (white). PRECISE: everything not kept. DEFAULT:
    also a band `feather` px deep inside the kept object's edge, so the model blends it in."""
    kept = as_bool(keep)
    if mode == "DEFAULT" and feather > 0:
        kept = _erode(kept, feather)
    return _to_image(~kept)


def composite_precise(photo: Image.Image, generated: Image.Image,
                      keep: Image.Image) -> Image.Image:
    """Every kept pixel is the photo's, bit for bit; the rest is the generated image (scaled to
    the photo's size)."""
    generated = _fit(generated, photo.size)
    return Image.composite(photo.convert("RGB"), generated, keep.convert("L").point(
        lambda v: 255 if v >= 128 else 0))


def composite_default(photo: Image.Image, generated: Image.Image, keep: Image.Image,
                      feather: int) -> Image.Image:
    """The kept object's core stays the photo's; across a feathered band at its edge the photo
    fades into what the model painted there."""
    generated = _fit(generated, photo.size)
    kept = as_bool(keep)
    core = _to_image(_erode(kept, max(1, feather // 2)))
    blurred = np.asarray(core.filter(ImageFilter.GaussianBlur(max(1, feather / 2))))
    # Clipped to the keep-mask: no trace of the old background outside the object.
    alpha = Image.fromarray(np.where(kept, blurred, 0).astype(np.uint8), mode="L")
    return Image.composite(photo.convert("RGB"), generated, alpha)


def render_size(size: tuple[int, int], max_side: int, requested: tuple[int, int] | None,
                multiple: int = 8) -> tuple[int, int]:
    """The generation resolution: what the user asked for (one side given: the other follows
    the photo's aspect), else the photo's aspect within max_side; multiples of 8 (the latent
    grid), at least 64."""
    if requested and all(requested):
        return requested
    if requested:
        given_width, given_height = requested
        scale = given_width / size[0] if given_width else given_height / size[1]
    else:
        scale = min(1.0, max_side / max(size))
    width, height = (max(64, int(side * scale) // multiple * multiple) for side in size)
    return width, height


def as_bool(mask: Image.Image) -> np.ndarray:
    return np.asarray(mask.convert("L")) >= 128


def _to_image(values: np.ndarray) -> Image.Image:
    return Image.fromarray(values.astype(np.uint8) * 255, mode="L")


def _erode(values: np.ndarray, radius: int) -> np.ndarray:
    """Shrink the kept regions by `radius` px on every side (a disc, so corners round off)."""
    import cv2

    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    # Pixels outside the image count as kept, so an object touching the border stays there.
    return cv2.erode(values.astype(np.uint8), kernel, borderType=cv2.BORDER_CONSTANT,
                     borderValue=1).astype(bool)


def _fit(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    image = image.convert("RGB")
    return image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)
