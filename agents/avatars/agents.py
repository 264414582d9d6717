"""The avatar pipelines' faust agents.

avatar_train: admit -> prepare (the photo check, crops stored) -> the trainer worker (its own
role and consumer group: training takes minutes to hours) -> trained (the model registered,
the job done).
avatar_generate: admit -> generate (the model looked up, the prompt's {subject} filled) -> the
GPU worker, keyed by model so one worker keeps it warm -> finish.
"""
from __future__ import annotations

import asyncio
import random
import time
from functools import partial

from agents.avatars import photos as photo_check
from agents.avatars import stages
from agents.avatars.topics import AvatarTopics
from agents.models.stage_models import StageModels
from schemas import ErrorCode, JobEventKind, JobStatus, RenderResult, StageFailure
from schemas.avatars import (
    MAX_PHOTOS,
    AvatarGenerateJob,
    AvatarGenerateResult,
    AvatarGenerateUpload,
    AvatarTrainJob,
    AvatarTrainResult,
    AvatarTrainUpload,
    ModelRecord,
    PhotoCheck,
    PhotoRejection,
    TrainOutcome,
    TrainRequest,
)
from schemas.uris import join_uri
from streams.adapters.images import IMAGE_SUFFIXES, encode_png
from streams.core.admission import admit_job
from streams.core.pipeline import Pipeline
from streams.core.render import rendered, request_render
from streams.core.runtime import Runtime

_rng = random.SystemRandom()
# Photos decoded at once by the photo check (each may be tens of megapixels).
PHOTOS_AT_ONCE = 8


# --- training ---
async def admit_training(rt: Runtime, message, data: dict) -> None:
    def make_job(upload: AvatarTrainUpload, job_id: str) -> AvatarTrainJob:
        for uri in upload.images:
            rt.storage.police(uri)
        return stages.training_job(upload, job_id, rt.settings, _rng, time.time(),
                                   rt.base_for(upload.tenant))

    await admit_job(rt, message, data, "avatar_train", AvatarTrainUpload, make_job)


async def photo_uris(rt: Runtime, images: list[str]) -> list[str]:
    """The photos a request names: its URIs, or the images under its one prefix."""
    if len(images) == 1 and images[0].endswith("/"):
        listed = await rt.storage.list(images[0], limit=10 * MAX_PHOTOS)
        found = sorted(uri for uri in listed if uri.lower().endswith(IMAGE_SUFFIXES))
        if not found:
            raise StageFailure(ErrorCode.OBJECT_NOT_FOUND, f"no images under {images[0]}")
        if len(found) > MAX_PHOTOS:
            raise StageFailure(ErrorCode.INVALID_PARAMS,
                               f"{images[0]} holds more than {MAX_PHOTOS} images; a training "
                               f"takes at most {MAX_PHOTOS} (10-15 is what it needs)")
        return found
    return images


async def prepare(rt: Runtime, models: StageModels, job: AvatarTrainJob) -> None:
    """The photo check: one face per photo, no near-duplicates, enough of them; the face
    crops stored; the job handed to a trainer."""
    await rt.job_event(job.job_id, JobEventKind.STATUS, status=JobStatus.ANALYZING)
    started = time.perf_counter()
    settings = rt.settings
    rules = photo_check.PhotoRules(job.params.resolution, settings.avatar_min_face_px,
                                   settings.avatar_duplicate_distance)

    reading = asyncio.Semaphore(PHOTOS_AT_ONCE)

    async def check(uri: str):
        try:
            async with reading:
                photo = await rt.image_uncached(uri)
        except StageFailure as failure:  # this photo is unusable, not the whole request
            return PhotoRejection(image=uri, code=failure.error.code.value,
                                  reason=failure.error.message)
        # One thread hop for the detector (loaded on first use, off the event loop too) and
        # the crop.
        return await asyncio.to_thread(
            lambda: photo_check.check_photo(uri, photo, models.faces.detect(photo), rules))

    checked = await asyncio.gather(*(check(uri) for uri in await photo_uris(rt, job.images)))
    accepted = [c for c in checked if isinstance(c, photo_check.AcceptedPhoto)]
    rejected = [c for c in checked if isinstance(c, PhotoRejection)]
    kept, duplicates = photo_check.drop_duplicates(accepted, rules.duplicate_distance)
    rejected += duplicates
    if len(kept) < settings.avatar_min_photos:
        raise StageFailure(ErrorCode.TOO_FEW_FACES,
                           photo_check.too_few(len(kept), settings.avatar_min_photos, rejected))
    job.photos = [join_uri(job.model_prefix, stages.photo_name(n)) for n in range(len(kept))]
    job.photo_hashes = [photo.hash for photo in kept]
    job.rejected = rejected
    encoded = await asyncio.to_thread(lambda: [encode_png(photo.crop) for photo in kept])
    await asyncio.gather(*(
        rt.storage.put(uri, data, "image/png",
                       metadata={"job-id": job.job_id, "source": photo.image[:1024]})
        for uri, data, photo in zip(job.photos, encoded, kept)))
    job.timings_ms["photo_check"] = round((time.perf_counter() - started) * 1000, 2)
    sent = await rt.send(rt.topics.train, job.model_id, TrainRequest(
        job_id=job.job_id, tenant=job.tenant, job=job,
        reply_topic=rt.topics_of(AvatarTopics).avatar_trained))
    await rt.queued_for_gpu(job.job_id, sent, photo_check=PhotoCheck(
        accepted=[photo.image for photo in kept], rejected=rejected))


async def trained(rt: Runtime, outcome: TrainOutcome) -> None:
    """Register the model (before the job says done, so whoever hears done can use it)."""
    job = outcome.job
    job.timings_ms["train"] = outcome.train_ms
    uploads = join_uri(rt.base_for(job.tenant), "uploads", job.job_id) + "/"
    record = ModelRecord(
        model_id=job.model_id, tenant=job.tenant or rt.settings.default_tenant,
        base_model=job.base_model, family=job.family, adapter=outcome.adapter,
        files=job.model_prefix, cover=job.photos[0] if job.photos else None,
        uploads=uploads if all(uri.startswith(uploads) for uri in job.images) else None,
        rank=job.params.rank, alpha=job.params.alpha, subject=job.subject,
        class_word=job.class_word, photo_hashes=job.photo_hashes, steps=outcome.steps,
        final_loss=outcome.final_loss, created_at=time.time())
    await rt.send(rt.topics.models, record.key, record, acknowledged=True)
    result = AvatarTrainResult(
        model_id=job.model_id, subject=job.subject, class_word=job.class_word,
        trigger=job.trigger, base_model=job.base_model, adapter=outcome.adapter,
        photos=job.photos, rejected=job.rejected, steps=outcome.steps,
        final_loss=outcome.final_loss, resumed_from=outcome.resumed_from, params=job.params,
        timings_ms=job.timings_ms, waits_ms=job.waits_ms)
    await rt.job_event(job.job_id, JobEventKind.COMPLETED, result=result, tenant=job.tenant,
                       to_tracker=True)


def register_training(rt: Runtime, models: StageModels, index) -> None:
    topics = rt.topics_of(AvatarTopics)
    rt.stage_agent("avatar-prepare", partial(prepare, rt, models), AvatarTrainJob,
                   topic=topics.avatar_prepare)
    rt.stage_agent("avatar-trained", partial(trained, rt), TrainOutcome,
                   topic=topics.avatar_trained)


# --- generation ---
async def admit_generation(rt: Runtime, message, data: dict) -> None:
    def make_job(upload: AvatarGenerateUpload, job_id: str) -> AvatarGenerateJob:
        return stages.generation_job(upload, job_id, rt.settings.render_defaults,
                                     rt.settings.avatar_lora_scale, _rng, time.time(),
                                     rt.base_for(upload.tenant))

    await admit_job(rt, message, data, "avatar_generate", AvatarGenerateUpload, make_job)


async def generate(rt: Runtime, job: AvatarGenerateJob) -> None:
    settings = rt.settings
    record = await rt.registry.find(job.tenant or settings.default_tenant, job.model_id)
    job = stages.bind_model(job, record, settings.model_id("diffusion"))
    # Keyed by model: every request for one model lands on one partition, so on the GPU
    # worker that already holds its adapter.
    await request_render(rt, job, rt.topics_of(AvatarTopics).avatar_finish, key=record.key,
                         prompt=job.prompt, task="avatar", model=job.base_model,
                         adapter=job.adapter, adapter_id=record.key,
                         lora_scale=job.lora_scale, params=job.params,
                         output_prefix=job.output_prefix,
                         metadata={"model-id": job.model_id[:1024]})


async def finish(rt: Runtime, reply: RenderResult) -> None:
    job = rendered(reply, AvatarGenerateJob)
    result = AvatarGenerateResult(
        model_id=job.model_id, images=[{"uri": uri} for uri in reply.images],
        prompt=job.prompt, seed=job.params.seed, width=job.params.width,
        height=job.params.height, lora_scale=job.lora_scale, timings_ms=job.timings_ms,
        waits_ms=job.waits_ms)
    await rt.job_event(job.job_id, JobEventKind.COMPLETED, result=result, tenant=job.tenant,
                       to_tracker=True)


def register_generation(rt: Runtime, models: StageModels, index) -> None:
    topics = rt.topics_of(AvatarTopics)
    rt.stage_agent("avatar-generate", partial(generate, rt), AvatarGenerateJob,
                   topic=topics.avatar_generate)
    rt.stage_agent("avatar-finish", partial(finish, rt), RenderResult,
                   topic=topics.avatar_finish)


TRAIN = Pipeline(name="avatar_train", register=register_training, topics=AvatarTopics,
                 admit=admit_training, first_stage="avatar_prepare", uploads=(AvatarTrainUpload,))
GENERATE = Pipeline(name="avatar_generate", register=register_generation, topics=AvatarTopics,
                    admit=admit_generation, first_stage="avatar_generate",
                    uploads=(AvatarGenerateUpload,))
