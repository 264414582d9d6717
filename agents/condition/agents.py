"""Conditioned generation's faust agents: bucket notifications in (routed by rules, the
pipeline's own outputs ignored), then prepare (resize, conditioning map), the GPU agent's
ControlNet render straight into the output prefix, and finish."""
from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import urllib.parse
from functools import partial

from agents.condition import bucket_events
from agents.condition import stages as conditioning
from agents.condition.topics import ConditionTopics
from agents.models.stage_models import StageModels
from schemas import ErrorCode, JobEventKind, JobStatus, RenderResult, StageFailure
from schemas.conditioning import (
    BucketRule,
    Conditioning,
    ConditionJob,
    ConditionResult,
    ConditionUpload,
)
from schemas.params import bounded_size
from schemas.uris import join_uri
from streams.adapters.images import encode_png
from streams.adapters.index.base import VectorIndex
from streams.core.admission import admit_job
from streams.core.metrics import BUCKET_EVENTS
from streams.core.pipeline import Pipeline
from streams.core.render import MadeImage, rendered, request_render
from streams.core.runtime import Runtime

log = logging.getLogger("restyle")
_rng = random.SystemRandom()
MAX_METADATA_VALUE = 1024


async def admit(rt: Runtime, message, data: dict) -> None:
    """One image to condition on, straight from the uploads topic (no bucket rule)."""
    def make_job(upload: ConditionUpload, job_id: str) -> ConditionJob:
        rt.storage.police(upload.image)
        if upload.output:
            rt.storage.police(upload.output + "x")
        return bucket_events.job_for_upload(upload, job_id, rt.settings,
                                            rt.settings.render_defaults, _rng, time.time(),
                                            rt.base_for(upload.tenant))

    await admit_job(rt, message, data, "condition", ConditionUpload, make_job)


async def notified(rt: Runtime, message) -> None:
    """One bucket notification: each created object a rule matches becomes a job."""
    try:
        data = json.loads(message.value) if message.value else None
        found = bucket_events.parse_notification(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        await rt.dead_letter(message, ErrorCode.INVALID_JSON,
                             f"bucket notification is not JSON: {exc}")
        return
    except StageFailure as failure:
        await rt.dead_letter(message, failure.error.code, failure.error.message)
        return
    for reason in found.ignored:
        BUCKET_EVENTS.labels("ignored").inc()
        log.info("bucket event ignored: %s", reason)
    rules = rt.settings.rules
    for obj in found.created:
        if bucket_events.is_own_output(rules, obj.bucket, obj.key):
            BUCKET_EVENTS.labels("own_output").inc()  # the loop guard
            continue
        rule = bucket_events.match_rule(rules, obj.bucket, obj.key)
        if rule is None:
            BUCKET_EVENTS.labels("unmatched").inc()
            continue
        await start(rt, rule, obj)


async def start(rt: Runtime, rule: BucketRule, obj: bucket_events.CreatedObject) -> None:
    settings = rt.settings
    job_id = bucket_events.job_id_for(obj)
    uri = f"s3://{obj.bucket}/{obj.key}"
    try:
        metadata = await rt.storage.metadata(uri)
        job = bucket_events.job_for_object(rule, obj, settings, settings.render_defaults,
                                           _rng, metadata, time.time())
    except StageFailure as failure:
        BUCKET_EVENTS.labels("failed").inc()
        error = failure.error
        if error.code is ErrorCode.OBJECT_NOT_FOUND:
            error = error.model_copy(update={"message": f"{uri} was deleted before it "
                                                        f"could be processed"})
        await rt.fail(job_id, error, kind=JobEventKind.REJECTED, pipeline="condition")
        return
    BUCKET_EVENTS.labels("submitted").inc()
    await rt.job_event(job_id, JobEventKind.SUBMITTED, job=job, to_tracker=True)



async def prepare(rt: Runtime, models: StageModels, job: ConditionJob) -> None:
    await rt.job_event(job.job_id, JobEventKind.STATUS, status=JobStatus.ANALYZING)
    started = time.perf_counter()
    photo = await rt.image_uncached(job.image)
    width, height = job.size or (None, None)
    size = bounded_size(*conditioning.target_size(photo.size, job.fit, width, height,
                                                  job.max_side), rt.settings.render_limits,
                        job.params.num_images)
    fitted = await asyncio.to_thread(conditioning.fit_image, photo, size, job.fit)
    control = await asyncio.to_thread(control_map, models, fitted, job)
    job.control_map = join_uri(job.output_prefix, f"{job.conditioning.value}.png")
    made = MadeImage(job.control_map, await asyncio.to_thread(encode_png, control),
                     {"job-id": job.job_id, "kind": "conditioning-map"})
    job.params = job.params.model_copy(update={"width": size[0], "height": size[1]})
    job.timings_ms["prepare"] = round((time.perf_counter() - started) * 1000, 2)
    await request_render(rt, job, rt.topics_of(ConditionTopics).finish, prompt=job.prompt,
                         task="controlnet", control=job.conditioning.value,
                         control_image=job.control_map,
                         params=job.params, output_prefix=job.output_prefix.rstrip("/"),
                         metadata=result_metadata(job, rt.settings), made=[made])


def control_map(models: StageModels, image, job: ConditionJob):
    if job.conditioning is Conditioning.CANNY:
        return conditioning.canny_map(image, *job.canny)
    if job.conditioning is Conditioning.SEG:
        return conditioning.colorize(models.semantic.classes(image),
                                     conditioning.ade20k_palette())
    return models.depth.estimate(image)  # one channel, like the makeover's depth map


async def finish(rt: Runtime, reply: RenderResult) -> None:
    job = rendered(reply, ConditionJob)
    result = ConditionResult(
        images=[{"uri": uri} for uri in reply.images], control_map=job.control_map,
        conditioning=job.conditioning, prompt=job.prompt, seed=job.params.seed,
        rule=job.rule, source=job.source, width=job.params.width,
        height=job.params.height, timings_ms=job.timings_ms, waits_ms=job.waits_ms)
    await rt.job_event(job.job_id, JobEventKind.COMPLETED, result=result, tenant=job.tenant,
                       to_tracker=True)


def register(rt: Runtime, models: StageModels, index: VectorIndex) -> None:
    # The raw message: notifications are S3's shape, parsed (and dead-lettered) by notified.
    topics = rt.topics_of(ConditionTopics)
    rt.stage_agent("bucket-intake", partial(notified, rt), None, topic=topics.bucket_events)
    rt.stage_agent("condition-prepare", partial(prepare, rt, models), ConditionJob,
                   topic=topics.prepare)
    rt.stage_agent("condition-finish", partial(finish, rt), RenderResult,
                   topic=topics.finish)


def result_metadata(job: ConditionJob, settings) -> dict[str, str]:
    """What each result carries as S3 object metadata (ASCII: free text is URL-quoted)."""
    def ascii(text: str) -> str:
        return urllib.parse.quote(text, safe=" ,.;:-_/()[]'")[:MAX_METADATA_VALUE]

    try:
        models = {"diffusion-model": ascii(settings.model_id("diffusion")),
                  "controlnet-model": ascii(settings.model_id(
                      f"controlnet_{job.conditioning.value}"))}
    except ValueError as exc:  # e.g. no seg ControlNet configured for SDXL
        raise StageFailure(ErrorCode.MODEL_ERROR, str(exc)) from None
    metadata = {"prompt": ascii(job.prompt), "conditioning": job.conditioning.value, **models}
    if job.source:
        metadata["source-bucket"] = ascii(job.source.get("bucket", ""))
        metadata["source-key"] = ascii(job.source.get("key", ""))
    else:
        metadata["source"] = ascii(job.image)
    if job.rule:
        metadata["rule"] = ascii(job.rule)
    return metadata


PIPELINE = Pipeline(name="condition", register=register, topics=ConditionTopics, admit=admit,
                    first_stage="prepare", uploads=(ConditionUpload,))
