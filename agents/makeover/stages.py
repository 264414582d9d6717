"""The room makeover's stages as plain functions: decoded inputs in, outputs out, no Kafka.

The faust agents in `agents/makeover/agents.py` wrap each one: decode, call, emit.
"""
from __future__ import annotations

import random
import re

from PIL import Image

from schemas import (
    Detection,
    ErrorCode,
    MakeoverJob,
    MakeoverUpload,
    ProductMatch,
    RenderParams,
    StageFailure,
)
from schemas.params import RenderDefaults, resolve_render


def resolve_params(upload: MakeoverUpload, defaults: RenderDefaults,
                   rng: random.Random) -> RenderParams:
    """Fill what the user left out from configured defaults; pick and record a seed."""
    params = resolve_render(upload.params.model_dump(), defaults, rng)
    if params.width % 8 or params.height % 8:
        raise StageFailure(ErrorCode.INVALID_PARAMS,
                           f"width and height must be multiples of 8 "
                           f"(got {params.width}x{params.height})")
    return params


def admit(upload: MakeoverUpload, job_id: str, styles: dict[str, str], defaults: RenderDefaults,
          now: float, rng: random.Random) -> MakeoverJob:
    """Validate what the schema cannot (the style) and resolve the job's parameters."""
    style = upload.style.strip().lower()
    if style not in styles:
        known = ", ".join(sorted(styles))
        raise StageFailure(ErrorCode.UNKNOWN_STYLE,
                           f"unknown style {upload.style!r}; choose one of: {known}")
    return MakeoverJob(job_id=job_id, tenant=upload.tenant, style=style, image=upload.image,
                       params=resolve_params(upload, defaults, rng), submitted_at=now)


def crop(image: Image.Image, detection: Detection, min_side: int = 8) -> Image.Image:
    box = detection.box
    x0, y0 = int(box.x0), int(box.y0)
    x1, y1 = max(int(box.x1), x0 + min_side), max(int(box.y1), y0 + min_side)
    return image.crop((x0, y0, min(x1, image.width), min(y1, image.height)))


def embed_detections(image: Image.Image, detections: list[Detection], embedder) -> list[Detection]:
    if not detections:
        return []
    vectors = embedder.embed_images([crop(image, d) for d in detections])
    return [d.model_copy(update={"embedding": v.tolist()}) for d, v in zip(detections, vectors)]


async def match_products(detections: list[Detection], index, k: int,
                         min_score: float) -> list[ProductMatch]:
    """k nearest catalog products per detected object, best first, each product once."""
    best: dict[str, ProductMatch] = {}
    for detection in detections:
        if detection.embedding is None:
            continue
        for hit in await index.query(detection.embedding, k=k, min_score=min_score):
            current = best.get(hit.product.product_id)
            if current is None or hit.score > current.score:
                best[hit.product.product_id] = ProductMatch(
                    product_id=hit.product.product_id, caption=hit.product.caption,
                    category=hit.product.category, score=hit.score, box=detection.box,
                    label=detection.label)
    return sorted(best.values(), key=lambda m: m.score, reverse=True)


_COMPEL_SPECIALS = re.compile(r"[()\[\]+\-]|\.and\(|\.blend\(")


def _quote(text: str) -> str:
    # Captions are free text: strip characters compel would read as weighting syntax.
    return " ".join(_COMPEL_SPECIALS.sub(" ", text).split())


def compose_prompt(style_prompt: str, matches: list[ProductMatch], style_weight: float,
                   product_weight: float, max_products: int) -> str:
    """The style's base prompt plus the best-matching products' captions, in compel syntax:
    `(base)1.0, (caption one)0.8, (caption two)0.8`."""
    parts = [f"({_quote(style_prompt)}){style_weight:g}"]
    parts += [f"({_quote(m.caption)}){product_weight:g}" for m in matches[:max_products]
              if _quote(m.caption)]
    # Valid compel syntax by construction (_quote removes every special character), so it is not
    # parsed here: pyparsing takes ~50 ms a prompt, and the GPU worker parses it anyway.
    return ", ".join(parts)
