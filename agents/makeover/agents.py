"""The room makeover's faust agents: one per stage, each on its own topic so each can scale
alone. Each agent decodes, calls its stage function (in a thread: models block) and emits.
analyze -> embed -> retrieve -> compose -> depth run in one worker role, so they are chained
(Runtime.stage_agent): analyze calls the rest in-process unless RESTYLE_CHAIN_STAGES or
RESTYLE_UNCHAINED_STAGES split the chain; analyze itself is fed by the job tracker, and the
render goes to the GPU workers' topic."""
from __future__ import annotations

import asyncio
import random
import time
from functools import partial

from agents.makeover import stages as makeover
from agents.makeover.topics import MakeoverTopics
from agents.models.detect import rescale_detections
from agents.models.stage_models import StageModels
from schemas import (
    JobEventKind,
    JobStatus,
    MakeoverJob,
    MakeoverResult,
    MakeoverUpload,
    ProductMatch,
    RenderResult,
)
from schemas.uris import join_uri
from streams.adapters.images import encode_png, fit_control
from streams.adapters.index.base import VectorIndex
from streams.core.admission import admit_job
from streams.core.pipeline import Pipeline
from streams.core.render import MadeImage, rendered, request_render
from streams.core.runtime import Runtime


def _timed(job: MakeoverJob, stage: str, started: float) -> None:
    job.timings_ms[stage] = round((time.perf_counter() - started) * 1000, 2)


_rng = random.SystemRandom()


async def admit(rt: Runtime, message, data: dict) -> None:
    def make_job(upload: MakeoverUpload, job_id: str) -> MakeoverJob:
        rt.storage.police(upload.image)
        return makeover.admit(upload, job_id, rt.settings.styles, rt.settings.render_defaults,
                             time.time(), _rng)

    await admit_job(rt, message, data, "room_makeover", MakeoverUpload, make_job)


async def analyze(rt: Runtime, models: StageModels, job: MakeoverJob) -> None:
    settings = rt.settings
    await rt.job_event(job.job_id, JobEventKind.STATUS, status=JobStatus.ANALYZING)
    started = time.perf_counter()
    image = await rt.image(job.image)
    small = await rt.image(job.image, settings.analysis_max_side)
    detections = await asyncio.to_thread(
        models.detector.detect, small, settings.detection_labels,
        settings.detection_threshold, settings.max_detections)
    job.detections = rescale_detections(detections, image.width / small.width)
    _timed(job, "analyze", started)
    await rt.send(rt.topics_of(MakeoverTopics).embed, job.job_id, job)


async def embed(rt: Runtime, models: StageModels, job: MakeoverJob) -> None:
    started = time.perf_counter()
    image = await rt.image(job.image)
    job.detections = await asyncio.to_thread(makeover.embed_detections, image,
                                             job.detections, models.embedder)
    _timed(job, "embed", started)
    await rt.send(rt.topics_of(MakeoverTopics).retrieve, job.job_id, job)


async def retrieve(rt: Runtime, index: VectorIndex, job: MakeoverJob) -> None:
    settings = rt.settings
    started = time.perf_counter()
    job.matches = await makeover.match_products(job.detections, index, settings.retrieve_k,
                                                settings.match_score_floor)
    for detection in job.detections:  # vectors are spent; keep the messages small
        detection.embedding = None
    _timed(job, "retrieve", started)
    await rt.send(rt.topics_of(MakeoverTopics).compose, job.job_id, job)


async def compose(rt: Runtime, job: MakeoverJob) -> None:
    settings = rt.settings
    started = time.perf_counter()
    job.prompt = makeover.compose_prompt(
        settings.styles[job.style], job.matches, settings.style_weight,
        settings.product_weight, settings.max_products_in_prompt)
    _timed(job, "compose", started)
    await rt.send(rt.topics_of(MakeoverTopics).depth, job.job_id, job)


async def depth(rt: Runtime, models: StageModels, job: MakeoverJob) -> None:
    settings = rt.settings
    started = time.perf_counter()
    small = await rt.image(job.image, settings.analysis_max_side)
    # At the render's size: the map the render is conditioned on, small enough to travel
    # with the request (streams/core/render.py) and the same render as from the full map.
    size = (job.params.width, job.params.height)
    png = await asyncio.to_thread(
        lambda: encode_png(fit_control(models.depth.estimate(small), size)))
    results = join_uri(rt.base_for(job.tenant), "results", job.job_id)
    job.depth_map = join_uri(results, "depth.png")
    _timed(job, "depth", started)
    await request_render(rt, job, rt.topics_of(MakeoverTopics).reanalyze, prompt=job.prompt,
                         control_image=job.depth_map, params=job.params,
                         output_prefix=results, made=[MadeImage(job.depth_map, png)])


async def reanalyze(rt: Runtime, models: StageModels, index: VectorIndex,
                    reply: RenderResult) -> None:
    settings = rt.settings
    job = rendered(reply, MakeoverJob)
    await rt.job_event(job.job_id, JobEventKind.STATUS, status=JobStatus.REANALYZING)
    started = time.perf_counter()
    job.images = reply.images
    if reply.sent_at:
        job.waits_ms["reanalyze"] = round((time.time() - reply.sent_at) * 1000, 2)
    products: list[ProductMatch] = []
    for uri in reply.images:
        image = await rt.image(uri, carried=reply.carried)
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
    await rt.job_event(job.job_id, JobEventKind.COMPLETED, result=result, tenant=job.tenant,
                       to_tracker=True)


def register(rt: Runtime, models: StageModels, index: VectorIndex) -> None:
    topics = rt.topics_of(MakeoverTopics)
    # (name, handler, input, topic, chained to the stage before it)
    stages = [("analyze", partial(analyze, rt, models), MakeoverJob, topics.analyze, False),
              ("embed", partial(embed, rt, models), MakeoverJob, topics.embed, True),
              ("retrieve", partial(retrieve, rt, index), MakeoverJob, topics.retrieve, True),
              ("compose", partial(compose, rt), MakeoverJob, topics.compose, True),
              ("depth", partial(depth, rt, models), MakeoverJob, topics.depth, True),
              ("reanalyze", partial(reanalyze, rt, models, index), RenderResult,
               topics.reanalyze, False)]
    for name, handler, model, topic, chained in stages:
        rt.stage_agent(name, handler, model, topic, chained=chained)


PIPELINE = Pipeline(name="room_makeover", register=register, topics=MakeoverTopics,
                    admit=admit, first_stage="analyze", uploads=(MakeoverUpload,))
