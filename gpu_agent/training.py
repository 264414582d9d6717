"""The trainer worker (`restyle worker trainer`): trains avatar adapters from the train topic, one
at a time, in its own consumer group.

Training runs in a thread, so the worker's event loop keeps heartbeating and polling however
long it takes (an hour-long run never gets the worker out of its group). Every
`checkpoint_every` steps the LoRA weights and the optimizer's state are written to storage
before training goes on; a request redelivered after a crash (kill -9 included) resumes from
the last checkpoint, and because each step's random draws depend only on (seed, step), it ends
exactly where the uninterrupted run would have. A request whose adapter is already written is
answered from its manifest, not trained again.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import tempfile
import time
from pathlib import Path

from pydantic import BaseModel, ValidationError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from gpu_agent.adapters import ADAPTER_FILE
from gpu_agent.trainer import Checkpoint, TrainingRun, generate_class_images, train
from gpu_agent import faults
from schemas import JobEventKind, JobStatus, Progress, StageFailure
from schemas.avatars import AvatarTrainJob, TrainOutcome, TrainRequest
from schemas.uris import join_uri
from streams.adapters.images import encode_png
from streams.core.runtime import Runtime, message_in_hand

log = logging.getLogger("restyle")
MANIFEST = "trained.json"
LATEST = "checkpoints/latest.json"
# About this many progress events per run, however many steps it has.
PROGRESS_EVENTS = 100


class CheckpointPointer(BaseModel):
    """checkpoints/latest.json: the last complete checkpoint (written after its files)."""

    job_id: str
    step: int
    prefix: str
    losses: list[float]
    seed: int


def register(rt: Runtime) -> None:
    async def handle(request: TrainRequest) -> None:
        job = request.job
        outcome = await trained_before(rt, job)
        if outcome is None:
            outcome = await run_training(rt, job)
        await rt.send(request.reply_topic, job.job_id, outcome)

    rt.stage_agent("trainer", handle, TrainRequest, topic=rt.topics.train)
    # The training of a trainer that died waits for this one again, and says so (one at a
    # time: the one it trained, and one finished but not yet committed).
    rt.take_over_requests([rt.topics.train], 2,
                          lambda value: TrainRequest.model_validate_json(value).job.job_id)


async def run_training(rt: Runtime, job: AvatarTrainJob) -> TrainOutcome:
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    await rt.job_event(job.job_id, JobEventKind.STATUS, status=JobStatus.TRAINING)
    photos = await asyncio.gather(*(rt.image_uncached(uri) for uri in job.photos))
    class_prefix, class_images = None, []
    if job.params.prior_preservation:
        class_prefix, class_images = await prior_images(rt, job)
    resume = await load_checkpoint(rt, job)
    if resume is not None:
        log.info("job %s resumes training at step %d", job.job_id, resume.step)
    every = max(1, job.params.steps // PROGRESS_EVENTS)

    def on_step(step: int, total: int, loss: float) -> None:  # from the training thread
        # A cancelled training stops after this step, and so does one on a trainer shutting
        # down (handed back: another trainer resumes it); its last checkpoint stays.
        rt.check_cancelled(job.job_id, hand_back_at_once=True)
        if step % every == 0 or step == total:
            asyncio.run_coroutine_threadsafe(rt.job_event(
                job.job_id, JobEventKind.PROGRESS,
                progress=Progress(step=step, total=total, loss=round(loss, 6))), loop)

    def on_checkpoint(checkpoint: Checkpoint) -> None:
        # Waits until stored: training goes on only once the checkpoint is safe.
        asyncio.run_coroutine_threadsafe(save_checkpoint(rt, job, checkpoint), loop).result()

    run = TrainingRun(job.base_model, photos, f"a photo of {job.trigger}",
                      f"a photo of {job.class_word}", job.params, class_images,
                      rt.settings.device_for("diffusion"))
    try:
        adapter = await asyncio.to_thread(train, run, on_step, on_checkpoint, resume)
    except (RuntimeError, ValueError, OSError, MemoryError) as exc:
        raise device_failure(exc, job, "training") from exc
    with tempfile.TemporaryDirectory() as directory:
        await asyncio.to_thread(adapter.save, directory)
        data = (Path(directory) / ADAPTER_FILE).read_bytes()
    adapter_uri = join_uri(job.model_prefix, "adapter", ADAPTER_FILE)
    await rt.storage.put(adapter_uri, data, "application/octet-stream",
                         metadata={"job-id": job.job_id, "base-model": job.base_model[:1024]})
    outcome = TrainOutcome(job_id=job.job_id, adapter=adapter_uri, steps=adapter.steps,
                           final_loss=adapter.final_loss, resumed_from=adapter.resumed_from,
                           train_ms=round((time.perf_counter() - started) * 1000, 2),
                           class_images=class_prefix, job=job)
    await rt.storage.put(join_uri(job.model_prefix, "adapter", MANIFEST),
                         outcome.model_dump_json().encode(), "application/json")
    return outcome


async def trained_before(rt: Runtime, job: AvatarTrainJob) -> TrainOutcome | None:
    """The outcome of an earlier delivery of this job that finished (its manifest names this
    job and its adapter exists)."""
    manifest = join_uri(job.model_prefix, "adapter", MANIFEST)
    if not await rt.storage.exists(manifest):
        return None
    try:
        done = TrainOutcome.model_validate_json(await rt.storage.get(manifest))
    except ValidationError:
        return None
    if done.job_id != job.job_id or not await rt.storage.exists(done.adapter):
        return None
    return done.model_copy(update={"job": job})


# --- checkpoints ---
async def save_checkpoint(rt: Runtime, job: AvatarTrainJob, checkpoint: Checkpoint) -> None:
    """The step's files first, the pointer to them last: a crash between leaves the previous
    checkpoint in force."""
    prefix = join_uri(job.model_prefix, "checkpoints", f"step-{checkpoint.step:06d}")
    lora = await asyncio.to_thread(save_tensors, checkpoint.lora)
    optimizer = await asyncio.to_thread(checkpoint.optimizer_bytes)
    await asyncio.gather(
        rt.storage.put(join_uri(prefix, "lora.safetensors"), lora, "application/octet-stream"),
        rt.storage.put(join_uri(prefix, "optimizer.pt"), optimizer, "application/octet-stream"))
    pointer = CheckpointPointer(job_id=job.job_id, step=checkpoint.step, prefix=prefix,
                                losses=checkpoint.losses, seed=job.params.seed)
    await rt.storage.put(join_uri(job.model_prefix, LATEST), pointer.model_dump_json().encode(),
                         "application/json")
    await rt.job_event(job.job_id, JobEventKind.STATUS, status=JobStatus.TRAINING,
                       stage=f"checkpoint at step {checkpoint.step}")


async def load_checkpoint(rt: Runtime, job: AvatarTrainJob) -> Checkpoint | None:
    """The job's last checkpoint, if one was written for this same job and seed."""
    uri = join_uri(job.model_prefix, LATEST)
    if not await rt.storage.exists(uri):
        return None
    try:
        pointer = CheckpointPointer.model_validate_json(await rt.storage.get(uri))
    except ValidationError:
        log.warning("ignoring the unreadable checkpoint pointer %s", uri)
        return None
    inside = job.model_prefix.rstrip("/") + "/"
    if pointer.job_id != job.job_id or pointer.seed != job.params.seed or \
            not pointer.prefix.startswith(inside) or ".." in pointer.prefix:
        return None
    lora, optimizer = await asyncio.gather(
        rt.storage.get(join_uri(pointer.prefix, "lora.safetensors")),
        rt.storage.get(join_uri(pointer.prefix, "optimizer.pt")))
    return Checkpoint(step=pointer.step, lora=load_tensors(lora),
                      optimizer=Checkpoint.optimizer_from(optimizer), losses=pointer.losses)


# --- prior preservation ---
def class_set_prefix(rt: Runtime, job: AvatarTrainJob) -> str:
    """Class images depend only on (base model, class word, count, resolution): one set
    serves every later training that asks for the same."""
    params = job.params
    digest = hashlib.sha256(json.dumps([job.base_model, job.class_word, params.class_images,
                                        params.resolution]).encode()).hexdigest()[:24]
    return join_uri(rt.settings.results_base, "avatars", "class-images", digest)


def device_failure(exc: BaseException, job: AvatarTrainJob, doing: str) -> StageFailure:
    """What a failed model call of a training means (faults.job_failure): a broken device
    ends the trainer, blaming this training (its checkpoint is kept; a healthy trainer
    resumes); out of memory fails the job with what to ask for instead."""
    params, in_hand = job.params, message_in_hand()
    return faults.job_failure(
        exc, f"{doing} at {params.resolution} px, batch {params.batch_size}, rank "
             f"{params.rank}", "try gradient_checkpointing, a smaller resolution or rank",
        f"training {job.job_id}", f"{doing} failed",
        [in_hand.spot] if in_hand is not None else [])


async def prior_images(rt: Runtime, job: AvatarTrainJob) -> tuple[str, list]:
    prefix = class_set_prefix(rt, job)
    done = join_uri(prefix, "done.json")
    count = job.params.class_images
    names = [join_uri(prefix, f"{n:04d}.png") for n in range(count)]
    if not await rt.storage.exists(done):
        await rt.job_event(job.job_id, JobEventKind.STATUS, status=JobStatus.TRAINING,
                           stage=f"drawing {count} class images of a {job.class_word}")
        try:
            images = await asyncio.to_thread(
                generate_class_images, job.base_model, f"a photo of {job.class_word}", count,
                job.params.resolution, rt.settings.avatar_class_image_steps, 0,
                rt.settings.device_for("diffusion"))
        except (RuntimeError, ValueError, OSError, MemoryError) as exc:
            raise device_failure(exc, job, "drawing class images") from exc
        for uri, image in zip(names, images):
            await rt.storage.put(uri, await asyncio.to_thread(encode_png, image), "image/png")
        await rt.storage.put(done, json.dumps({"count": count}).encode(), "application/json")
        return prefix, images
    return prefix, list(await asyncio.gather(*(rt.image_uncached(uri) for uri in names)))
