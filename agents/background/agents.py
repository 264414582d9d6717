"""Background replacement's faust agents: a batch is expanded into one job per image, each image
is masked (CPU), repainted (the GPU agent's inpaint task) and finished (composited) here.
The tracker starts each job and reports each outcome to the batch (streams/tracking/batches.py)."""
from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from functools import partial

from agents.background import stages as background
from agents.background.titan import titan_batch
from agents.background.topics import BackgroundTopics
from agents.models.detect import rescale_detections
from agents.models.stage_models import StageModels
from schemas import ErrorCode, JobError, JobEventKind, JobStatus, RenderResult, StageFailure
from schemas.background import (
    MAX_BATCH_IMAGES,
    BATCH_ID_PATTERN,
    BackgroundBatch,
    BackgroundJob,
    BackgroundResult,
    BatchEvent,
    BatchEventKind,
    ImageEntry,
    OutpaintMode,
)
from schemas.titan import TitanRequest
from schemas.uris import join_uri, object_under
from streams.adapters.images import encode_png, fit_within
from streams.adapters.index.base import VectorIndex
from streams.core.admission import derived_id, id_from_key, readable_field
from streams.core.pipeline import Pipeline
from streams.core.render import MadeImage, rendered, request_render
from streams.core.runtime import Runtime, validate
from streams.core.settings import Settings

_rng = random.SystemRandom()
# How many objects a batch's prefix is listed up to (a prefix may hold masks and notes beside
# its images); a longer listing is refused without being read to the end.
MAX_LISTED_OBJECTS = 2 * MAX_BATCH_IMAGES
# Images per batch-opening event: ~150 bytes each, so ~300 KB an event.
# A batch event stays well below Kafka's default 1 MB message limit.
OPEN_CHUNK_BYTES = 256 * 1024


async def admit(rt: Runtime, message, data: dict) -> None:
    """A batch (`"pipeline": "background_replace"`), or a Titan body (it names no pipeline)."""
    if "pipeline" in data:
        await admit_batch(rt, message, data)
    else:
        await admit_titan(rt, message, data)


async def admit_batch(rt: Runtime, message, data: dict) -> None:
    try:
        batch = validate(data, BackgroundBatch)
    except StageFailure as failure:
        batch_id = readable_field(data, "batch_id", BATCH_ID_PATTERN) or \
            id_from_key(message, BATCH_ID_PATTERN)
        await rt.dead_letter(message, failure.error.code, failure.error.message, batch_id)
        if batch_id:
            await refuse_batch(rt, batch_id, failure.error)
        return
    batch_id = batch.batch_id or id_from_key(message, BATCH_ID_PATTERN) or derived_id(message)
    await submit_batch(rt, batch.model_copy(update={"batch_id": batch_id}))


async def admit_titan(rt: Runtime, message, data: dict) -> None:
    """A Titan body on the uploads topic: the message key (if it is a valid id) names the batch;
    its one image's job id is in the batch's report and on restyle.results."""
    batch_id = id_from_key(message, BATCH_ID_PATTERN)
    try:
        request = validate(data, TitanRequest)
    except StageFailure as failure:
        await rt.dead_letter(message, failure.error.code, failure.error.message, batch_id)
        if batch_id:
            await refuse_batch(rt, batch_id, failure.error)
        return
    batch_id = batch_id or derived_id(message)
    try:
        # A Titan body names no tenant: the default one's (Kafka producers are trusted).
        batch = await titan_batch(rt.storage, rt.settings, request, batch_id, None,
                                  rt.base_for(None))
    except StageFailure as failure:
        await refuse_batch(rt, batch_id, failure.error)
        return
    await submit_batch(rt, batch)


async def expand(rt: Runtime, batch: BackgroundBatch) -> None:
    settings = rt.settings
    batch_id = batch.batch_id
    listings = {}
    for item in batch.images:
        uri = item if isinstance(item, str) else item.uri
        if background.is_prefix(uri):
            rt.storage.police(object_under(uri))  # before any listing
            # Listing stops past the batch cap: a prefix of millions is refused, not read.
            listings[uri] = await rt.storage.list(uri, MAX_LISTED_OBJECTS + 1)
            if len(listings[uri]) > MAX_LISTED_OBJECTS:
                raise StageFailure(ErrorCode.INVALID_PARAMS,
                                   f"more than {MAX_LISTED_OBJECTS:,} objects under {uri}; a "
                                   f"batch takes at most {MAX_BATCH_IMAGES:,} images (name a "
                                   f"narrower prefix or split it)")
    specs = background.expand(batch, listings)
    if batch.tenant not in (None, settings.default_tenant):
        # A prefix expands after the API counted the batch's entries: count again.
        allowed = settings.limits_for(batch.tenant).max_batch_images
        if len(specs) > allowed:
            raise StageFailure(ErrorCode.INVALID_PARAMS,
                               f"the batch expands to {len(specs):,} images; tenant "
                               f"{batch.tenant!r} may send at most {allowed:,} "
                               f"(RESTYLE_TENANT_MAX_BATCH_IMAGES)")
    params = background.resolve_params(batch, settings, settings.render_defaults, _rng)
    now = time.time()
    mode = OutpaintMode(settings.default_outpaint_mode)
    jobs = [background.image_job(batch, batch_id, spec, params, rt.base_for(batch.tenant), now,
                                 mode) for spec in specs]
    refused, entries = [], []
    for job in jobs:
        entry = ImageEntry(job_id=job.job_id, name=job.name, image=job.image)
        try:
            rt.storage.police(job.image)
            if job.mask_image:
                rt.storage.police(job.mask_image)
            entry.job = job
        except StageFailure as failure:
            refused.append((job, failure.error))
        entries.append(entry)
    # The batch learns its images, with their jobs, before any of them can finish
    # (acknowledged sends), in chunks far below the broker's message size limit; its tracker
    # hands the jobs to the pipeline a window at a time (RESTYLE_BATCH_WINDOW).
    for n, chunk in enumerate(chunks(entries, OPEN_CHUNK_BYTES)):
        await rt.send(rt.topics.batch_events, batch_id, BatchEvent(
            batch_id=batch_id, kind=BatchEventKind.OPENED if n == 0 else
            BatchEventKind.ENTRIES, at=now, tenant=batch.tenant, total=len(jobs),
            tolerated_failure_pct=batch.tolerated_failure_pct, webhook=batch.webhook,
            images=chunk), acknowledged=True)
    for job, error in refused:
        await rt.job_event(job.job_id, JobEventKind.REJECTED, error=error, tenant=job.tenant,
                           batch_id=batch_id, pipeline=job.pipeline)


def chunks(entries: list[ImageEntry], max_bytes: int) -> list[list[ImageEntry]]:
    """Consecutive runs of entries whose JSON stays within max_bytes each (at least one)."""
    runs, run, size = [], [], 0
    for entry in entries:
        length = len(entry.model_dump_json())
        if run and size + length > max_bytes:
            runs.append(run)
            run, size = [], 0
        run.append(entry)
        size += length
    return runs + [run] if run else runs


async def batch_refused(rt: Runtime, batch: BackgroundBatch, error: JobError) -> None:
    await refuse_batch(rt, batch.batch_id, error, batch.tenant, batch.webhook)


async def mask(rt: Runtime, models: StageModels, job: BackgroundJob) -> None:
    settings, masking = rt.settings, Masking(models, rt.settings)
    await rt.job_event(job.job_id, JobEventKind.STATUS, status=JobStatus.ANALYZING)
    started = time.perf_counter()
    photo = await rt.image(job.image)
    mask_image = await rt.mask_image(job.mask_image) if job.mask_image else None
    keep, labels = await asyncio.to_thread(
        background.keep_mask, photo, job, masking.detect, masking.segment, masking.salient,
        settings.background_labels, settings.salient_fallback, mask_image)
    small, repaint, params = await asyncio.to_thread(
        background.render_inputs, photo, keep, job, settings.background_max_side,
        settings.default_feather_share, settings.render_limits)
    prefix = job.output_prefix
    job.keep_mask = join_uri(prefix, "keep-mask.png")
    job.mask_labels = labels
    job.params = params
    render_image, render_mask = join_uri(prefix, "render-input.png"), \
        join_uri(prefix, "render-mask.png")
    made = [MadeImage(uri, png) for uri, png in zip(
        (job.keep_mask, render_image, render_mask), await asyncio.to_thread(
            lambda: [encode_png(image) for image in (keep, small, repaint)]))]
    job.timings_ms["mask"] = round((time.perf_counter() - started) * 1000, 2)
    # A batch's image takes the batch lane; a Titan request is one image someone waits for.
    await request_render(rt, job, rt.topics_of(BackgroundTopics).finish, prompt=job.prompt,
                         task="inpaint", image=render_image, mask=render_mask, params=params,
                         output_prefix=join_uri(prefix, "raw"), batch=not job.titan, made=made)


async def finish(rt: Runtime, reply: RenderResult) -> None:
    settings = rt.settings
    job = rendered(reply, BackgroundJob)
    started = time.perf_counter()
    photo = await rt.image(job.image)
    keep = await rt.mask_image(job.keep_mask)
    outputs = []
    for n, uri in enumerate(reply.images):
        generated = await rt.image_uncached(uri, carried=reply.carried)
        final = await asyncio.to_thread(background.finish, photo, generated, keep, job.mode,
                                        settings.default_feather_share)
        out = join_uri(job.output_prefix, f"{n}.png")
        await rt.storage.put(out, await asyncio.to_thread(encode_png, final), "image/png",
                             metadata={"job-id": job.job_id, "batch-id": job.batch_id,
                                       "source": job.image, "mode": job.mode.value,
                                       "seed": str(job.params.seed + n)})
        outputs.append({"uri": out})
    job.timings_ms["finish"] = round((time.perf_counter() - started) * 1000, 2)
    result = BackgroundResult(
        batch_id=job.batch_id, name=job.name, images=outputs, seed=job.params.seed,
        mode=job.mode, prompt=job.prompt, keep_mask=job.keep_mask,
        mask_target=job.mask_target, return_mask=job.return_mask, titan=job.titan,
        mask_labels=job.mask_labels, width=photo.width, height=photo.height,
        timings_ms=job.timings_ms, waits_ms=job.waits_ms)
    await rt.job_event(job.job_id, JobEventKind.COMPLETED, result=result, tenant=job.tenant,
                       batch_id=job.batch_id, to_tracker=True)


@dataclass(frozen=True)
class Masking:
    """The model calls a keep mask is made with (stages.keep_mask takes them as functions)."""
    models: StageModels
    settings: Settings

    def detect(self, photo, labels):
        settings = self.settings
        small = fit_within(photo, settings.analysis_max_side)
        found = self.models.detector.detect(small, labels, settings.detection_threshold,
                                            settings.max_detections)
        return rescale_detections(found, photo.width / small.width)

    def segment(self, photo, boxes):
        if self.settings.mask_refiner == "sam":
            return self.models.segmenter.segment(photo, boxes)
        if self.settings.mask_refiner == "u2netp":
            return self.models.salient.segment(photo, boxes)
        return None

    def salient(self, photo):
        return self.models.salient.main_object(photo)


def register(rt: Runtime, models: StageModels, index: VectorIndex) -> None:
    topics = rt.topics_of(BackgroundTopics)
    rt.stage_agent("background-expand", partial(expand, rt), BackgroundBatch,
                   topic=topics.expand, on_failure=partial(batch_refused, rt))
    rt.stage_agent("background-mask", partial(mask, rt, models), BackgroundJob,
                   topic=topics.mask)
    rt.stage_agent("background-finish", partial(finish, rt), RenderResult,
                   topic=topics.finish)


async def submit_batch(rt: Runtime, batch: BackgroundBatch) -> None:
    """Hand a validated batch (with its batch_id set) to the expand stage."""
    await rt.send(rt.topics_of(BackgroundTopics).expand, batch.batch_id, batch)


async def refuse_batch(rt: Runtime, batch_id: str, error: JobError, tenant: str | None = None,
                       webhook=None) -> None:
    """The batch fails as a whole (it could not be read or expanded), with the cause."""
    await rt.send(rt.topics.batch_events, batch_id, BatchEvent(
        batch_id=batch_id, kind=BatchEventKind.REJECTED, at=time.time(), tenant=tenant,
        error=error, webhook=webhook))


PIPELINE = Pipeline(name="background_replace", register=register, topics=BackgroundTopics,
                    admit=admit, first_stage="mask",
                    claims=lambda upload: "taskType" in upload,
                    uploads=(BackgroundBatch, TitanRequest))
