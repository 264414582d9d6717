"""The room makeover's faust agents: one per stage, each on its own topic so each scales alone.
Each agent decodes, calls its stage function (in a thread: models block) and emits."""
from __future__ import annotations

import asyncio
import json
import random
import re
import time
import uuid

from agents import makeover
from agents.images import encode_png
from agents.models import StageModels
from schemas import (JobEventKind, JobStatus, MakeoverJob, MakeoverResult, ProductMatch,
                     RenderRequest, RenderResult, StageFailure, UploadEvent)
from schemas.events import JOB_ID_PATTERN
from streams.runtime import Runtime, decode
from streams.uris import join_uri, parse_uri

_rng = random.SystemRandom()


def _timed(job: MakeoverJob, stage: str, started: float) -> None:
    job.timings_ms[stage] = round((time.perf_counter() - started) * 1000, 2)


def register(rt: Runtime, models: StageModels, index) -> None:
    app, topics, settings = rt.wiring.app, rt.topics, rt.settings

    @app.agent(topics["uploads"], name="intake")
    async def intake(stream):
        async for event in stream.events():
            await _intake(rt, event)

    async def analyze(job: MakeoverJob) -> None:
        await rt.job_event(job.job_id, JobEventKind.STATUS, status=JobStatus.ANALYZING)
        started = time.perf_counter()
        image = await rt.image(job.image)
        small = await rt.image(job.image, settings.analysis_max_side)
        detections = await asyncio.to_thread(
            models.detector.detect, small, settings.detection_labels,
            settings.detection_threshold, settings.max_detections)
        job.detections = _rescale(detections, image.width / small.width)
        _timed(job, "analyze", started)
        await rt.send("embed", job.job_id, job)

    async def embed(job: MakeoverJob) -> None:
        started = time.perf_counter()
        image = await rt.image(job.image)
        job.detections = await asyncio.to_thread(makeover.embed_detections, image,
                                                 job.detections, models.embedder)
        _timed(job, "embed", started)
        await rt.send("retrieve", job.job_id, job)

    async def retrieve(job: MakeoverJob) -> None:
        started = time.perf_counter()
        job.matches = await makeover.match_products(job.detections, index, settings.retrieve_k,
                                                    settings.match_score_floor)
        for detection in job.detections:  # vectors are spent; keep the messages small
            detection.embedding = None
        _timed(job, "retrieve", started)
        await rt.send("compose", job.job_id, job)

    async def compose(job: MakeoverJob) -> None:
        started = time.perf_counter()
        job.prompt = makeover.compose_prompt(
            settings.styles[job.style], job.matches, settings.style_weight,
            settings.product_weight, settings.max_products_in_prompt)
        _timed(job, "compose", started)
        await rt.send("depth", job.job_id, job)

    async def depth(job: MakeoverJob) -> None:
        started = time.perf_counter()
        small = await rt.image(job.image, settings.analysis_max_side)
        depth_map = await asyncio.to_thread(models.depth.estimate, small)
        job.depth_map = join_uri(settings.results_base, "results", job.job_id, "depth.png")
        await rt.storage.put(job.depth_map, await asyncio.to_thread(encode_png, depth_map),
                             "image/png")
        _timed(job, "depth", started)
        await rt.job_event(job.job_id, JobEventKind.STATUS, status=JobStatus.GENERATING)
        await rt.send("render", job.job_id, RenderRequest(
            job_id=job.job_id, tenant=job.tenant, prompt=job.prompt, control_image=job.depth_map,
            params=job.params, output_prefix=join_uri(settings.results_base, "results",
                                                      job.job_id),
            reply_topic=topics["reanalyze"].get_topic_name(),
            context=job.model_dump(mode="json")))

    async def reanalyze(reply: RenderResult) -> None:
        job = MakeoverJob.model_validate(reply.context)
        await rt.job_event(job.job_id, JobEventKind.STATUS, status=JobStatus.REANALYZING)
        started = time.perf_counter()
        job.images = reply.images
        job.timings_ms["render"] = reply.render_ms
        if reply.wait_ms is not None:
            job.waits_ms["render"] = reply.wait_ms
        if reply.sent_at:
            job.waits_ms["reanalyze"] = round((time.time() - reply.sent_at) * 1000, 2)
        products: list[ProductMatch] = []
        for uri in reply.images:
            image = await rt.image(uri)
            found = await asyncio.to_thread(
                models.detector.detect, image, settings.detection_labels,
                settings.detection_threshold, settings.max_detections)
            found = await asyncio.to_thread(makeover.embed_detections, image, found,
                                            models.embedder)
            products += await makeover.match_products(found, index, settings.retrieve_k,
                                                      settings.match_score_floor)
        _timed(job, "reanalyze", started)
        result = MakeoverResult(
            images=[{"uri": uri} for uri in job.images], products=products,
            seed=job.params.seed, prompt=job.prompt, style=job.style, depth_map=job.depth_map,
            detected=job.matches, timings_ms=job.timings_ms, waits_ms=job.waits_ms)
        await rt.job_event(job.job_id, JobEventKind.COMPLETED, result=result, tenant=job.tenant)

    stages = [("analyze", analyze, MakeoverJob), ("embed", embed, MakeoverJob),
              ("retrieve", retrieve, MakeoverJob), ("compose", compose, MakeoverJob),
              ("depth", depth, MakeoverJob), ("reanalyze", reanalyze, RenderResult)]
    for name, handler, model in stages:
        _stage_agent(rt, name, handler, model)


def _stage_agent(rt: Runtime, name: str, handler, model) -> None:
    async def agent(stream):
        async for event in stream.events():
            await rt.handle(name, event, model, handler)

    agent.__name__ = agent.__qualname__ = name  # how faust names it in logs
    rt.wiring.app.agent(rt.topics[name], name=name)(agent)


def _rescale(detections, factor: float):
    if factor == 1.0:
        return detections
    return [d.model_copy(update={"box": d.box.model_copy(update={
        "x0": d.box.x0 * factor, "y0": d.box.y0 * factor,
        "x1": d.box.x1 * factor, "y1": d.box.y1 * factor})}) for d in detections]


async def _intake(rt: Runtime, event) -> None:
    """Validate an upload, give it a job_id, and hand it to the tracker (which starts it once)."""
    message = event.message
    try:
        upload = decode(message.value, UploadEvent)
    except StageFailure as failure:
        job_id = _readable_job_id(message.value)
        await rt.dead_letter(message, failure.error.code, failure.error.message, job_id)
        if job_id:
            await rt.fail(job_id, failure.error, kind=JobEventKind.REJECTED)
        return
    job_id = upload.job_id or uuid.uuid4().hex
    try:
        parse_uri(upload.image, rt.storage.file_roots)
        job = makeover.admit(upload, job_id, rt.settings, time.time(), _rng)
    except StageFailure as failure:
        await rt.fail(job_id, failure.error, upload.tenant, kind=JobEventKind.REJECTED)
        return
    await rt.job_event(job_id, JobEventKind.SUBMITTED, tenant=upload.tenant, job=job)


def _readable_job_id(raw) -> str | None:
    try:
        value = json.loads(raw).get("job_id")
    except Exception:
        return None
    return value if isinstance(value, str) and re.match(JOB_ID_PATTERN, value) else None
