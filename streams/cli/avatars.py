"""`restyle avatar` as a client of the running stack: stage a person's photos in storage and
publish a training request; publish a generation request; list the caller's models."""
from __future__ import annotations

import json
import uuid

from streams.cli.background import stage_sources
from streams.cli.client import api_get, publish_one
from streams.core.settings import Settings


async def submit_training(settings: Settings, sources: list[str], subject: str | None,
                          class_word: str | None, params: dict, job_id: str | None = None
                          ) -> str:
    """Local photos (files or directories) go to uploads/{job_id}/ first; s3:// URIs and
    prefixes are passed as they are. Returns the job id (the model's id)."""
    job_id = job_id or uuid.uuid4().hex
    images = [image["uri"] for image in await stage_sources(settings, sources, job_id)]
    if not images:
        raise FileNotFoundError(f"no photos in {', '.join(sources)}")
    event = {"job_id": job_id, "pipeline": "avatar_train", "images": images, "params": params}
    if subject:
        event["subject"] = subject
    if class_word:
        event["class_word"] = class_word
    await publish_one(settings, settings.topics.uploads, job_id, json.dumps(event).encode())
    return job_id


async def submit_generation(settings: Settings, model_id: str, prompt: str,
                            negative_prompt: str | None, params: dict,
                            job_id: str | None = None) -> str:
    job_id = job_id or uuid.uuid4().hex
    event = {"job_id": job_id, "pipeline": "avatar_generate", "model_id": model_id,
             "prompt": prompt, "params": params}
    if negative_prompt is not None:
        event["negative_prompt"] = negative_prompt
    await publish_one(settings, settings.topics.uploads, job_id, json.dumps(event).encode())
    return job_id


def list_models(settings: Settings) -> list[dict]:
    return (api_get(settings, "/models") or {}).get("models", [])


def describe_training(job: dict) -> str:
    result = job.get("result") or {}
    lines = [f"model {result['model_id']}: trigger {result['trigger']!r}, "
             f"{len(result['photos'])} photos, {result['steps']} steps, "
             f"final loss {result['final_loss']:.4f}"]
    for rejected in result.get("rejected", []):
        lines.append(f"  not used: {rejected['image']}: {rejected['reason']}")
    lines.append(f"  adapter: {result['adapter']}")
    return "\n".join(lines)
