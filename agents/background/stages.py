"""Background replacement's stages as plain functions: a batch into per-image jobs, a photo into
its keep-mask, and generated images into the finished ones. No Kafka here; the agents in
`agents/background/agents.py` wrap these."""
from __future__ import annotations

import hashlib
import random
import re
from pathlib import PurePosixPath

from PIL import Image

from agents.background import masks
from schemas import ErrorCode, RenderParams, StageFailure
from schemas.background import (
    MAX_BATCH_IMAGES,
    BackgroundBatch,
    BackgroundJob,
    ImageSpec,
    MaskTarget,
    OutpaintMode,
)
from schemas.params import RenderDefaults, RenderLimits, bounded_size, resolve_render
from schemas.uris import join_uri
from streams.adapters.images import IMAGE_SUFFIXES
from streams.core.settings.background import BackgroundSettings


def job_id_for(batch_id: str, image_uri: str) -> str:
    """Each image's job id, derived from its batch and its URI: the same image submitted again
    in the same batch is the same job (and never runs twice)."""
    return f"{batch_id}-{hashlib.sha256(image_uri.encode()).hexdigest()[:16]}"


def is_prefix(uri: str) -> bool:
    return uri.endswith("/")


def name_in_prefix(uri: str, prefix: str) -> str:
    return uri[len(prefix):] if uri.startswith(prefix) else PurePosixPath(uri).name


def expand(batch: BackgroundBatch, listings: dict[str, list[str]]) -> list[ImageSpec]:
    """Every image of the batch, each with its mask input: a prefix becomes the images under it
    (listings: prefix -> object URIs), and per-image masks fall back to the batch's."""
    specs: list[ImageSpec] = []
    seen: set[str] = set()
    for item in batch.images:
        spec = item if isinstance(item, ImageSpec) else ImageSpec(uri=item)
        if not spec.mask_prompt and not spec.mask_image:
            spec = spec.model_copy(update={"mask_prompt": batch.mask_prompt,
                                           "mask_image": batch.mask_image})
        if is_prefix(spec.uri):
            found = [u for u in listings.get(spec.uri, [])
                     if u.lower().endswith(IMAGE_SUFFIXES) and not is_prefix(u)]
            if not found:
                raise StageFailure(ErrorCode.OBJECT_NOT_FOUND,
                                   f"no images under {spec.uri} (looked for "
                                   f"{', '.join(IMAGE_SUFFIXES)})")
            if spec.mask_image:
                raise StageFailure(ErrorCode.INVALID_MASK,
                                   f"{spec.uri} names many images, so one mask image cannot fit "
                                   f"them all; use a mask prompt for a prefix")
            expanded = [spec.model_copy(update={"uri": uri,
                                                "name": name_in_prefix(uri, spec.uri)})
                        for uri in sorted(found)]
        else:
            expanded = [spec.model_copy(update={"name": spec.name or
                                                PurePosixPath(spec.uri).name or spec.uri})]
        for one in expanded:
            if one.uri not in seen:  # an image listed twice is one job
                seen.add(one.uri)
                specs.append(one)
    if len(specs) > MAX_BATCH_IMAGES:
        raise StageFailure(ErrorCode.INVALID_PARAMS,
                           f"the batch expands to {len(specs):,} images; at most "
                           f"{MAX_BATCH_IMAGES:,} per batch (split it)")
    return specs


def resolve_params(batch: BackgroundBatch, settings: BackgroundSettings,
                   defaults: RenderDefaults, rng: random.Random) -> RenderParams:
    """Titan-style parameters to the renderer's: quality -> steps, cfg_scale -> guidance, a
    seed chosen and recorded when none is given. Width and height are settled per photo."""
    given = batch.params
    quality = (given.quality.value if given.quality else "standard")
    defaults = defaults.model_copy(update={
        "steps": settings.quality_steps[quality], "guidance": settings.default_cfg_scale,
        "controlnet_scale": 0.0, "width": 0, "height": 0, "num_images": 1})
    return resolve_render({"steps": given.steps, "guidance": given.cfg_scale, "seed": given.seed,
                           "width": given.width, "height": given.height,
                           "negative_prompt": batch.negative_prompt,
                           "num_images": given.num_images}, defaults, rng)


def image_job(batch: BackgroundBatch, batch_id: str, spec: ImageSpec, params: RenderParams,
              results_base: str, now: float,
              default_mode: OutpaintMode = OutpaintMode.DEFAULT) -> BackgroundJob:
    job_id = job_id_for(batch_id, spec.uri)
    return BackgroundJob(
        job_id=job_id, batch_id=batch_id, name=spec.name or spec.uri, tenant=batch.tenant,
        image=spec.uri, mask_prompt=spec.mask_prompt, mask_image=spec.mask_image,
        mask_target=batch.mask_target, return_mask=batch.return_mask, titan=batch.titan,
        prompt=batch.prompt, mode=batch.mode or default_mode,
        params=params,
        output_prefix=join_uri(results_base, "results", job_id), submitted_at=now)


def labels_of(mask_prompt: str) -> list[str]:
    """"bus, person and dog" -> ["bus", "person", "dog"]."""
    parts = re.split(r",|;|\band\b|\+", mask_prompt)
    return list(dict.fromkeys(p.strip().lower() for p in parts if p.strip()))


def keep_mask(photo: Image.Image, job: BackgroundJob, detect, segment, salient,
              default_labels: list[str], salient_fallback: bool,
              mask_image: Image.Image | None = None) -> tuple[Image.Image, list[str]]:
    """The job's keep-mask and the labels it was made from.

    detect(image, labels) -> detections; segment(image, boxes) -> bool arrays or None (keep
    the boxes); salient(image) -> bool array of the main object."""
    replace = job.mask_target is MaskTarget.REPLACE
    if mask_image is not None:
        keep = masks.keep_mask_from_mask_image(mask_image, photo.size,
                                               name=job.mask_image or "mask image")
        masks.check_usable(keep, f"the mask image {job.mask_image} is all one colour")
        return keep, []
    labels = labels_of(job.mask_prompt) if job.mask_prompt else list(default_labels)
    detections = detect(photo, labels)
    if detections:
        regions = segment(photo, [d.box for d in detections]) if segment else None
        named = masks.keep_mask_from_detections(photo.size, detections, regions)
        found = sorted({d.label for d in detections})
    elif job.mask_prompt or not salient_fallback:
        what = ", ".join(labels)
        raise StageFailure(ErrorCode.MASK_EMPTY,
                           f"none of the mask prompt's labels ({what}) were found in the image")
    else:
        named = Image.fromarray(salient(photo).astype("uint8") * 255, mode="L")
        found = ["salient object"]
    keep = masks.invert(named) if replace else named
    masks.check_usable(keep, f"made from {', '.join(found)}")
    return keep, found


def render_inputs(photo: Image.Image, keep: Image.Image, job: BackgroundJob, max_side: int,
                  feather_share: float, limits: RenderLimits
                  ) -> tuple[Image.Image, Image.Image, RenderParams]:
    """The photo and repaint mask at the generation size (within limits), and the params with
    that size."""
    requested = (job.params.width, job.params.height) \
        if job.params.width or job.params.height else None
    width, height = bounded_size(*masks.render_size(photo.size, max_side, requested), limits,
                                 job.params.num_images)
    feather = masks.feather_px(keep.size, feather_share)
    repaint = masks.repaint_mask(keep, job.mode.value, feather)
    small = photo.resize((width, height), Image.Resampling.LANCZOS)
    small_mask = repaint.resize((width, height), Image.Resampling.NEAREST)
    return small, small_mask, job.params.model_copy(update={"width": width, "height": height})


def finish(photo: Image.Image, generated: Image.Image, keep: Image.Image, mode: OutpaintMode,
           feather_share: float) -> Image.Image:
    """The delivered image, at the photo's size: PRECISE keeps every kept pixel exactly."""
    if mode is OutpaintMode.PRECISE:
        return masks.composite_precise(photo, generated, keep)
    return masks.composite_default(photo, generated, keep,
                                   masks.feather_px(keep.size, feather_share))
