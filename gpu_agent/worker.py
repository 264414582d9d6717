"""The GPU agent: renders RenderRequests with Stable Diffusion + ControlNet, or repaints them
with an inpainting pipeline (background replacement).

Inference runs in a thread so the consumer keeps heartbeating; progress goes out per step; a
redelivered request for a job already rendered replies from the stored manifest instead of
rendering again.

The model never waits on I/O: the worker holds up to `gpu_prefetch` requests of each lane at
once. While one runs in the model (one at a time: interactive requests first, see
gpu_agent/turns.py), the next ones fetch and decode their
inputs and the finished ones store their images and reply. Offsets are committed only up to the
oldest unanswered request (faust tracks acks per offset), so a crash loses nothing.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable

from PIL import Image
from pydantic import ValidationError

from gpu_agent import faults
from gpu_agent.adapters import AdapterFiles
from gpu_agent.duty import DutyMeter
from gpu_agent.engine import ProgressCallback, RenderEngine
from gpu_agent.turns import BATCH, INTERACTIVE, ModelTurns
from schemas import (
    ErrorCode,
    JobEventKind,
    JobStatus,
    Progress,
    RenderParams,
    RenderRequest,
    RenderResult,
    StageFailure,
)
from schemas.events import RenderTask
from schemas.params import bounded_size
from schemas.uris import join_uri
from streams.adapters.images import encode_png
from streams.core.runtime import Runtime

MANIFEST = "render.json"
log = logging.getLogger("restyle")


def register(rt: Runtime, engine: RenderEngine) -> DutyMeter:
    settings = rt.settings
    files = AdapterFiles(settings.state_dir / "adapters",
                         settings.avatar_adapter_cache_mb * 1024 * 1024)
    meter = DutyMeter()
    # One model call at a time: interactive requests first, then batch ones (gpu_agent/turns)
    turns = ModelTurns(settings.interactive_burst)

    # Requests this worker is answering, by job and output: the same request delivered again
    # while the first delivery renders (both prefetched before either stored its manifest)
    # waits for that render instead of making another.
    answering: dict[tuple[str, str], asyncio.Future] = {}

    def lane_handler(lane: str):
        async def render(request: RenderRequest) -> None:
            meter.received()
            try:
                await answer(request, lane)
            finally:
                meter.answered()
        return render

    async def answer(request: RenderRequest, lane: str) -> None:
        waited_ms = round((time.time() - request.sent_at) * 1000, 2) if request.sent_at else None
        key = (request.job_id, request.output_prefix)
        if key in answering:
            result = await asyncio.shield(answering[key])
        else:
            answering[key] = outcome = asyncio.get_running_loop().create_future()
            outcome.add_done_callback(_retrieve_exception)
            try:
                result = await rendered_or_render(request, lane)
                outcome.set_result(result)
            except asyncio.CancelledError:
                outcome.cancel()
                raise
            except BaseException as exc:
                outcome.set_exception(exc)
                raise
            finally:
                del answering[key]
        # A render says how long it waited for the model; a delivery answered from an earlier
        # render's manifest, how long it waited on the topic.
        result = result.model_copy(update={"context": request.context,
                                           "wait_ms": result.wait_ms if result.wait_ms
                                           is not None else waited_ms})
        await rt.send(request.reply_topic, request.job_id, result)

    async def rendered_or_render(request: RenderRequest, lane: str) -> RenderResult:
        manifest_uri = join_uri(request.output_prefix, MANIFEST)
        # The inputs are read while the manifest is looked for: on a first delivery (nearly
        # always) the model's turn comes a storage round trip sooner. A redelivery answered
        # from the manifest reads them for nothing.
        inputs = asyncio.ensure_future(_inputs(rt, request, files))
        inputs.add_done_callback(_retrieve_exception)  # a dropped read must not log as lost
        try:
            done = await _rendered_before(rt, manifest_uri, request)
            if done is not None:
                return done
            return await _render(rt, engine, request, await inputs, turns, lane, meter)
        finally:
            inputs.cancel()  # not needed (answered from the manifest, or failed); no-op if read

    rt.stage_agent("render", lane_handler(INTERACTIVE), RenderRequest, topic=rt.topics.render,
                   concurrency=settings.gpu_prefetch)
    rt.stage_agent("render-batch", lane_handler(BATCH), RenderRequest,
                   topic=rt.topics.render_batch, concurrency=settings.gpu_prefetch)

    return meter


def _retrieve_exception(task: asyncio.Task) -> None:
    if not task.cancelled():
        task.exception()


# The engine call a request makes once its inputs are read: (engine, params, on_step) -> images.
EngineCall = Callable[[RenderEngine, RenderParams, ProgressCallback], list[Image.Image]]


async def _inpaint_call(rt: Runtime, request: RenderRequest, _files: AdapterFiles) -> EngineCall:
    image, mask = await asyncio.gather(rt.image_uncached(request.image),
                                       rt.mask_image(request.mask))
    model = request.model or rt.settings.model_id("inpainting")
    return lambda engine, params, on_step: engine.inpaint(model, request.prompt, image, mask,
                                                          params, on_step)


async def _controlnet_call(rt: Runtime, request: RenderRequest,
                           _files: AdapterFiles) -> EngineCall:
    control = await rt.image(request.control_image)
    try:
        controlnet = rt.settings.model_id(f"controlnet_{request.control}")
    except ValueError as exc:
        raise StageFailure(ErrorCode.MODEL_ERROR, str(exc)) from None
    model = request.model or rt.settings.model_id("diffusion")
    return lambda engine, params, on_step: engine.render(model, controlnet, request.prompt,
                                                         control, params, on_step)


async def _avatar_call(rt: Runtime, request: RenderRequest, files: AdapterFiles) -> EngineCall:
    """A person's adapter on the base model this worker serves. The adapter file comes from
    the local disk cache (storage on a miss); an adapter trained on another base model is
    refused, never applied to the wrong weights."""
    served = rt.settings.model_id("diffusion")
    if request.model != served:
        raise StageFailure(ErrorCode.MODEL_MISMATCH,
                           f"the adapter was trained on {request.model!r}; this GPU worker "
                           f"serves {served!r}")
    path = await files.local(request.adapter, rt.storage.get)
    return lambda engine, params, on_step: engine.avatar(
        served, request.adapter_id, path, request.prompt, params, request.lora_scale, on_step)


# Each render task: how its inputs are read and which engine call it makes.
TASKS: dict[RenderTask, Callable[[Runtime, RenderRequest, AdapterFiles],
                                 Awaitable[EngineCall]]] = {
    "avatar": _avatar_call,
    "inpaint": _inpaint_call,
    "controlnet": _controlnet_call,
    "controlnet_depth": _controlnet_call,  # controlnet with control="depth" (its default)
}


async def _inputs(rt: Runtime, request: RenderRequest, files: AdapterFiles) -> EngineCall:
    """Read request's inputs; return the engine call to make. A request too large to render
    (any producer can send one) fails its job before anything is read."""
    bounded_size(request.params.width, request.params.height, rt.settings.render_limits,
                 request.params.num_images)
    return await TASKS[request.task](rt, request, files)


async def _render(rt: Runtime, engine: RenderEngine, request: RenderRequest, call: EngineCall,
                  turns: ModelTurns, lane: str, meter: DutyMeter) -> RenderResult:
    loop = asyncio.get_running_loop()

    def on_step(step: int, total: int) -> None:  # called from the render thread
        # A cancelled job stops here, at the next denoising step (JobCancelled leaves the
        # pipeline's loop; nothing is stored or answered).
        rt.check_cancelled(request.job_id)
        asyncio.run_coroutine_threadsafe(
            rt.job_event(request.job_id, JobEventKind.PROGRESS,
                         progress=Progress(step=step, total=total)), loop)

    async with turns.turn(lane):
        # The wait for the GPU ends here, at the model's turn (a request held in the worker
        # behind others still waits): what a user waiting on a makeover feels.
        waited_ms = round((time.time() - request.sent_at) * 1000, 2) if request.sent_at \
            else None
        # This worker holds the job now: from here, time without progress is a stall.
        await rt.job_event(request.job_id, JobEventKind.STATUS, status=JobStatus.GENERATING)
        started = time.perf_counter()
        try:
            images = await asyncio.to_thread(call, engine, request.params, on_step)
        except (RuntimeError, ValueError, OSError, MemoryError) as exc:
            raise render_failure(request, exc) from exc
        finally:
            meter.model_ran(time.perf_counter() - started)
    render_ms = round((time.perf_counter() - started) * 1000, 2)

    uris = [join_uri(request.output_prefix, f"{n}.png") for n in range(len(images))]
    result = RenderResult(job_id=request.job_id, images=uris, seed=request.params.seed,
                          render_ms=render_ms, wait_ms=waited_ms, context=request.context)

    async def store(n: int, image) -> None:
        await rt.storage.put(uris[n], await asyncio.to_thread(encode_png, image), "image/png",
                             metadata={**request.metadata, "job-id": request.job_id,
                                       "seed": str(request.params.seed + n)})

    # The manifest is written alongside the images, not after them (a storage round trip
    # off every job): a redelivery trusts it only once every image it names exists.
    manifest = result.model_copy(update={"context": {}, "wait_ms": None}
                                 ).model_dump_json().encode()
    await asyncio.gather(*(store(n, image) for n, image in enumerate(images)),
                         rt.storage.put(join_uri(request.output_prefix, MANIFEST), manifest,
                                        "application/json"))
    return result


def render_failure(request: RenderRequest, exc: BaseException) -> StageFailure:
    """What a failed render means for its job (faults.job_failure): out of memory names the
    size that did not fit."""
    params = request.params
    return faults.job_failure(
        exc, f"rendering {params.num_images} image(s) of {params.width}x{params.height} "
             f"({request.task}, {params.steps} steps)", "ask for fewer or smaller images",
        f"job {request.job_id}", "rendering failed")


async def _rendered_before(rt: Runtime, manifest_uri: str,
                           request: RenderRequest) -> RenderResult | None:
    """The stored answer of an earlier delivery of this same request, if it finished: its
    manifest names this job and only images under this prefix, and they all exist (a crash may
    fall between their writes). A manifest another job left at the prefix (a new upload to a
    bucket key rendered before) or one pointing elsewhere is not trusted: render again."""
    if not await rt.storage.exists(manifest_uri):
        return None
    try:
        done = RenderResult.model_validate_json(await rt.storage.get(manifest_uri))
    except ValidationError:  # unreadable (cut short, an older format): not to be trusted
        log.warning("ignoring the unreadable render manifest %s", manifest_uri)
        return None
    inside = request.output_prefix.rstrip("/") + "/"
    if done.job_id != request.job_id or not all(uri.startswith(inside) and ".." not in uri
                                                 for uri in done.images):
        log.info("not reusing %s: it was written for job %s", manifest_uri, done.job_id)
        return None
    present = await asyncio.gather(*(rt.storage.exists(uri) for uri in done.images))
    return done if all(present) else None
