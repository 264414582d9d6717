"""Avatar jobs from uploads, and a generation job bound to its model: pure functions."""
from __future__ import annotations

import random

from schemas import ErrorCode, StageFailure
from schemas.avatars import (
    AvatarGenerateJob,
    AvatarGenerateUpload,
    AvatarTrainJob,
    AvatarTrainUpload,
    ModelRecord,
    ModelStatus,
)
from schemas.params import MAX_SEED, RenderDefaults, resolve_render
from schemas.uris import join_uri

# Trigger tokens are drawn from letters rare at the start of English words, so the text
# encoder has no strong prior for them (DreamBooth's "sks" idea, without everyone sharing one
# token that means a rifle to the model).
RARE_LETTERS = "bcdfghjklmnpqrtvwxz"
TRAINED_FAMILIES = ("sd15",)


def new_subject(rng: random.Random) -> str:
    return rng.choice("zqxj") + "".join(rng.choice(RARE_LETTERS) for _ in range(2)) + \
        rng.choice("aeiou") + rng.choice(RARE_LETTERS)


def training_job(upload: AvatarTrainUpload, job_id: str, settings, rng: random.Random,
                 now: float, tenant_base: str) -> AvatarTrainJob:
    """The training job an upload asks for: every parameter settled, the model id (the job's
    id), the trigger token drawn when none is given, and where the model is written."""
    if settings.diffusion_family not in TRAINED_FAMILIES:
        raise StageFailure(ErrorCode.INVALID_PARAMS,
                           f"avatar training runs on Stable Diffusion 1.x/2.x base models "
                           f"(RESTYLE_DIFFUSION_FAMILY=sd15); this deployment serves "
                           f"{settings.diffusion_family}")
    seed = upload.params.seed if upload.params.seed is not None else rng.randint(0, MAX_SEED)
    return AvatarTrainJob(
        job_id=job_id, tenant=upload.tenant, model_id=job_id, images=upload.images,
        subject=upload.subject or new_subject(rng),
        class_word=(upload.class_word or settings.avatar_class_word).strip(),
        params=settings.train_params(upload.params, seed),
        base_model=settings.model_id("diffusion"), family=settings.diffusion_family,
        model_prefix=join_uri(tenant_base, "models", job_id) + "/", submitted_at=now)


def generation_job(upload: AvatarGenerateUpload, job_id: str, defaults: RenderDefaults,
                   lora_scale: float, rng: random.Random, now: float,
                   tenant_base: str) -> AvatarGenerateJob:
    given = upload.params.model_dump(exclude_none=True)
    if upload.negative_prompt is not None:
        given["negative_prompt"] = upload.negative_prompt
    return AvatarGenerateJob(
        job_id=job_id, tenant=upload.tenant, model_id=upload.model_id, prompt=upload.prompt,
        params=resolve_render(given, defaults, rng),
        lora_scale=given.get("lora_scale", lora_scale),
        output_prefix=join_uri(tenant_base, "results", job_id), submitted_at=now)


def bind_model(job: AvatarGenerateJob, record: ModelRecord | None,
               served_base: str) -> AvatarGenerateJob:
    """The job with its model's adapter and trigger phrase, or why it cannot run. Another
    tenant's model is looked up under the caller's tenant, so it is simply not found."""
    if record is None or record.status is ModelStatus.DELETED:
        gone = " (it was deleted)" if record is not None else ""
        raise StageFailure(ErrorCode.MODEL_NOT_FOUND,
                           f"no model {job.model_id!r}{gone}: train one with "
                           f"\"pipeline\": \"avatar_train\" (GET /models lists yours)")
    if record.base_model != served_base:
        raise StageFailure(ErrorCode.MODEL_MISMATCH,
                           f"model {job.model_id!r} was trained on {record.base_model!r}; this "
                           f"deployment serves {served_base!r} (RESTYLE_DIFFUSION_MODEL)")
    return job.model_copy(update={"adapter": record.adapter, "base_model": record.base_model,
                                  "prompt": job.prompt.replace("{subject}", record.trigger)})


def photo_name(n: int) -> str:
    return f"photos/{n:02d}.png"


