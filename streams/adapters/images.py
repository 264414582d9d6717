"""Decoding untrusted image bytes safely, and encoding results."""
from __future__ import annotations

import io

from PIL import Image, ImageOps, UnidentifiedImageError

from schemas import ErrorCode, StageFailure

# restyle checks its own, configurable pixel limit (RESTYLE_MAX_IMAGE_PIXELS) from the header in
# decode_image, with a message naming the size. Pillow's global guard stays on behind it (it
# refuses above 2 x 89.5 Mpx whatever restyle is configured to allow).

# The formats restyle decodes: photo formats only. Pillow would otherwise also open EPS (through
# Ghostscript, a history of code execution bugs), PSD, ICNS, font and scientific formats.
# (JPEG covers the multi-picture JPEGs phones write: Pillow opens them as MPO.)
DECODABLE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")

# What counts as an image when a directory or a storage prefix is listed.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def decode_image(data: bytes, max_pixels: int, name: str = "image",
                 at_least: int | None = None) -> Image.Image:
    """RGB image from bytes. The pixel count is checked from the header before any pixel is
    decoded, so a decompression bomb costs nothing. With at_least, a JPEG may be decoded at a
    reduced scale (1/2, 1/4, 1/8) as long as the longer side stays >= at_least: for callers
    that fit it within at_least anyway, this skips most of the decoding work."""
    if not data:
        raise StageFailure(ErrorCode.NOT_AN_IMAGE, f"{name} is empty (0 bytes)")
    try:
        # Lazy: reads the header only.
        image = Image.open(io.BytesIO(data), formats=DECODABLE_FORMATS)
    except Image.DecompressionBombError as exc:  # Pillow's own guard, far above ours
        raise StageFailure(ErrorCode.IMAGE_TOO_LARGE,
                           f"{name} is above the limit of {max_pixels:,} pixels "
                           f"(RESTYLE_MAX_IMAGE_PIXELS): {exc}") from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise StageFailure(ErrorCode.NOT_AN_IMAGE,
                           f"{name} is not an image format restyle reads "
                           f"({', '.join(DECODABLE_FORMATS)}); {_opening(data)}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise StageFailure(ErrorCode.IMAGE_TOO_LARGE,
                           f"{name} is {width}x{height} = {width * height:,} pixels, above the "
                           f"limit of {max_pixels:,} (RESTYLE_MAX_IMAGE_PIXELS)")
    try:
        if at_least and image.format == "JPEG":
            scale = max(1, max(width, height) // at_least)
            image.draft("RGB", (width // scale, height // scale))
        image.load()
        image = ImageOps.exif_transpose(image)
    except Exception as exc:  # truncated or corrupt pixel data
        raise StageFailure(ErrorCode.NOT_AN_IMAGE, f"{name} is corrupt: {exc}") from None
    return image.convert("RGB")


# zlib level 1: a 1024-px depth map encodes in a third of the time of PIL's default level 6 at
# about the same size (within ~15% here, smaller for photo-like images). Every stage writes
# PNGs on the job's critical path; storage is the cheaper side of that trade.
PNG_COMPRESS_LEVEL = 1


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def fit_control(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """A control image (a depth, edge or segmentation map) at the render's size (width,
    height), as the ControlNet pipeline is given it. A stage that makes a map for a render can
    store and send it at that size (far smaller than the photo's); the GPU worker fits
    whatever it is given the same way, and leaves one already at the size as it is, so the
    render is the same either way. (Bicubic on one band then as RGB equals bicubic on RGB.)"""
    size = (int(size[0]), int(size[1]))
    if image.mode not in ("L", "RGB"):  # (PIL resizes palette images without filtering)
        image = image.convert("RGB")
    return image if image.size == size else image.resize(size, Image.Resampling.BICUBIC)


def fit_within(image: Image.Image, max_side: int) -> Image.Image:
    if max(image.size) <= max_side:
        return image
    copy = image.copy()
    copy.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return copy


def _opening(data: bytes) -> str:
    """How the data begins, in words a user can act on: a text saved as a photo shows its
    text (an HTML error page, a note), anything else its first bytes in hex."""
    head = data[:12]
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        text = ""
    if text and text.isprintable():
        return f'it begins with the text "{text}"'
    return f"it begins with the bytes {head.hex(' ')}"
