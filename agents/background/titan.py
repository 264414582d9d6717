"""The Titan Image Generator body as a one-image background batch, and the Titan response shape.

Titan's mask conventions differ by task; restyle's keep-mask is white = keep:
- OUTPAINTING: black pixels are the region kept, so its maskImage is inverted;
- INPAINTING: black pixels are the region changed, white kept: already a keep-mask.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import io

from PIL import Image, ImageOps

from schemas import ErrorCode, StageFailure
from schemas.background import (
    BackgroundBatch,
    BackgroundParams,
    ImageSpec,
    MaskTarget,
    OutpaintMode,
)
from schemas.titan import TITAN_MAX_IMAGE_BYTES, TITAN_MAX_SIDE, TitanRequest
from schemas.uris import join_uri
from streams.adapters.images import decode_image, encode_png


def decode_base64_image(text: str, field: str, max_pixels: int) -> tuple[bytes, Image.Image]:
    """A Titan image field: base64 of a PNG or JPEG at most 5 MB and 1408 px on its longer
    side, as the public API documents."""
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise StageFailure(ErrorCode.INVALID_PARAMS, f"{field} is not valid base64") from None
    if len(data) > TITAN_MAX_IMAGE_BYTES:
        raise StageFailure(ErrorCode.IMAGE_TOO_LARGE,
                           f"{field} is {len(data):,} bytes; at most "
                           f"{TITAN_MAX_IMAGE_BYTES:,} (5 MB) are accepted")
    image = decode_image(data, max_pixels, field)
    if Image.open(io.BytesIO(data)).format not in ("PNG", "JPEG"):
        raise StageFailure(ErrorCode.NOT_AN_IMAGE, f"{field} must be a PNG or JPEG image")
    if max(image.size) > TITAN_MAX_SIDE:
        raise StageFailure(ErrorCode.IMAGE_TOO_LARGE,
                           f"{field} is {image.width}x{image.height}; its longer side must be "
                           f"at most {TITAN_MAX_SIDE} px")
    return data, image


def to_multiple_of_8(value: int | None) -> int | None:
    return None if value is None else value // 8 * 8


def read_titan_images(request: TitanRequest, max_pixels: int) -> tuple[bytes, bytes | None]:
    """The body's image as sent, checked, and its mask (if any) as restyle's keep-mask PNG."""
    edit = request.edit
    data, image = decode_base64_image(edit.image, "image", max_pixels)
    if edit.maskImage is None:
        return data, None
    _, mask = decode_base64_image(edit.maskImage, "maskImage", max_pixels)
    if mask.size != image.size:
        raise StageFailure(ErrorCode.INVALID_MASK,
                           f"maskImage is {mask.width}x{mask.height} but image is "
                           f"{image.width}x{image.height}; they must be the same size")
    keep = mask.convert("L")
    if request.taskType == "OUTPAINTING":
        keep = ImageOps.invert(keep)
    return data, encode_png(keep)


async def titan_batch(storage, settings, request: TitanRequest, batch_id: str,
                      tenant: str | None, tenant_base: str) -> BackgroundBatch:
    """Store the body's images (under tenant_base, the tenant's storage prefix) and describe
    the job as a one-image background batch."""
    edit = request.edit
    # In a thread: an image of up to 5 MB decoded, a mask decoded and encoded again, would
    # hold the event loop (the status API, every agent of the worker) for as long.
    data, keep_png = await asyncio.to_thread(read_titan_images, request,
                                             settings.max_image_pixels)
    base = join_uri(tenant_base, "uploads", batch_id)
    image_uri = join_uri(base, "image.png" if data[:4] == b"\x89PNG" else "image.jpg")
    await storage.put(image_uri, data, "image/png" if image_uri.endswith(".png")
                      else "image/jpeg")
    mask_uri = None
    if keep_png is not None:
        mask_uri = join_uri(base, "keep-mask.png")
        await storage.put(mask_uri, keep_png, "image/png")
    config = request.imageGenerationConfig
    outpainting = request.taskType == "OUTPAINTING"
    return BackgroundBatch(
        pipeline="background_replace", batch_id=batch_id, tenant=tenant,
        images=[ImageSpec(uri=image_uri, name="image", mask_prompt=edit.maskPrompt,
                          mask_image=mask_uri)],
        prompt=edit.text or settings.inpaint_default_prompt,
        negative_prompt=edit.negativeText,
        mode=request.outPaintingParams.outPaintingMode if outpainting else OutpaintMode.PRECISE,
        mask_target=MaskTarget.KEEP if outpainting else MaskTarget.REPLACE,
        params=BackgroundParams(num_images=config.numberOfImages, quality=config.quality,
                                width=to_multiple_of_8(config.width),
                                height=to_multiple_of_8(config.height),
                                cfg_scale=config.cfgScale, seed=config.seed),
        tolerated_failure_pct=0.0, return_mask=edit.returnMask, titan=True,
    )


def titan_mask(keep: Image.Image, mask_target: MaskTarget) -> Image.Image:
    """restyle's keep-mask in the Titan convention of the task it came from."""
    return ImageOps.invert(keep.convert("L")) if mask_target is MaskTarget.KEEP else keep
