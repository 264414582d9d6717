"""The GPU agent: renders RenderRequests with Stable Diffusion + ControlNet, or repaints them
with an inpainting pipeline (background replacement).

Inference runs in a thread so the consumer keeps heartbeating; progress goes out as the steps
go, at most every RESTYLE_PROGRESS_INTERVAL_S (gpu_agent/progress.py); a
redelivered request for a job already rendered replies from the stored manifest instead of
rendering again (the manifest is looked for while the render starts: EarlierRender).

The model never waits on I/O: the worker holds up to `gpu_prefetch` requests of each lane at
once. While one runs in the model (one at a time: interactive requests first, see
gpu_agent/turns.py), the next ones fetch and decode their
inputs and the finished ones store their images and reply. Offsets are committed only up to the
oldest unanswered request (faust tracks acks per offset), so a crash loses nothing.
"""
from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Awaitable, Callable, Hashable

from PIL import Image
from pydantic import ValidationError

from gpu_agent import faults
from gpu_agent.adapters import AdapterFiles
from gpu_agent.batching import RenderBatches
from gpu_agent.duty import DutyMeter
from gpu_agent.engine import RenderEngine, Shot, shared_params
from gpu_agent.memory import report_gpu_memory
from gpu_agent.previews import Previews
from gpu_agent.progress import ProgressPace
from gpu_agent.turns import BATCH, INTERACTIVE, ModelTurns
from schemas import (
    ErrorCode,
    JobEventKind,
    JobStatus,
    Progress,
    RenderRequest,
    RenderResult,
    StageFailure,
)
from schemas.events import RenderTask
from schemas.params import bounded_size
from schemas.uris import join_uri
from streams.adapters.images import encode_png
from streams.core import tracing
from streams.core.runtime import HandedBack, InHand, JobCancelled, Runtime, message_in_hand

MANIFEST = "render.json"
# How long a render's first step waits for the look for an earlier answer (EarlierRender).
LOOKUP_WAIT_S = 1.0
GPU_MEMORY_REPORT_S = 15.0
log = logging.getLogger("restyle")


def register(rt: Runtime, engine: RenderEngine) -> DutyMeter:
    settings = rt.settings
    files = AdapterFiles(settings.state_dir / "adapters",
                         settings.avatar_adapter_cache_mb * 1024 * 1024)
    meter = DutyMeter()
    # One model call at a time: interactive requests first, then batch ones (gpu_agent/turns)
    turns = ModelTurns(settings.interactive_burst)
    # Compatible requests waiting for the model together share one call (gpu_agent/batching)
    max_batch = settings.render_max_batch or (4 if engine.device.startswith("cuda") else 1)
    batches = RenderBatches(turns, max_batch, settings.render_max_wait_ms / 1000)
    if engine.device.startswith("cuda"):
        rt.app.timer(interval=GPU_MEMORY_REPORT_S)(report_gpu_memory)

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
        # The manifest of an earlier delivery is looked for while the request renders its
        # first step, not before (EarlierRender): on a first delivery (nearly always) the
        # model's turn comes a storage round trip sooner. A redelivery answered from the
        # manifest reads its inputs and renders a step for nothing.
        earlier = EarlierRender(partial(_looked_up, rt, request))
        inputs = asyncio.ensure_future(_inputs(rt, request, files))
        inputs.add_done_callback(_retrieve_exception)  # a dropped read must not log as lost
        try:
            prepared = await inputs
            return await _render(rt, engine, request, prepared, earlier, batches, lane, meter)
        except AnsweredBefore as answered:
            return answered.result
        except (JobCancelled, HandedBack):
            raise  # (nobody waits for an answer; a draining worker does not wait on storage)
        except Exception:
            # Failed (its inputs gone, say) where an earlier delivery's answer stands: that
            # answer, as when the look came first.
            try:
                done = await earlier.settled()
            except Exception:  # noqa: BLE001 - the render's own failure is what is told
                done = None
            if done is not None:
                return done
            raise
        finally:
            inputs.cancel()  # not needed (answered from the manifest, or failed); no-op if read
            earlier.cancel()

    # Held at once per lane: a batch being gathered, and the next ones reading their inputs.
    held = settings.gpu_prefetch + max_batch - 1
    rt.stage_agent("render", lane_handler(INTERACTIVE), RenderRequest, topic=rt.topics.render,
                   concurrency=held)
    rt.stage_agent("render-batch", lane_handler(BATCH), RenderRequest,
                   topic=rt.topics.render_batch, concurrency=held)
    # The jobs of a worker killed mid-render wait for this one again, and say so. Twice what
    # a worker holds: finished requests not yet committed lie among those it held.
    rt.take_over_requests([rt.topics.render, rt.topics.render_batch], 2 * held,
                          lambda value: RenderRequest.model_validate_json(value).job_id)

    return meter


def _retrieve_exception(task: asyncio.Task) -> None:
    if not task.cancelled():
        task.exception()


class AnsweredBefore(Exception):
    """An earlier delivery of the request finished, and stored its answer (result)."""

    def __init__(self, result: RenderResult):
        super().__init__(result.job_id)
        self.result = result


class EarlierRender:
    """The look for an earlier delivery's stored answer (_rendered_before), made while the
    request renders rather than before: started once the render thread is (the storage
    calls' own Python work would otherwise hold the event loop, and the model's turn, back).
    At its first step the render thread waits for the look, LOOKUP_WAIT_S at most (a step
    outlasts a look by far, so it seldom waits at all); until the look is over the render
    reports no progress; once it found an answer the render stops, and an answer found only
    after the last step drops the new images. So a request answered before
    never reports progress, stores images or replies from a new render: the stored answer is
    sent. A look that fails fails the request, as before. A slow store holds the model's
    turn a second at most."""

    def __init__(self, look: Callable[[], Awaitable[RenderResult | None]]):
        self._look = look
        # The request's own context (its trace), not that of the batch's leader, which
        # starts the look.
        self._context = contextvars.copy_context()
        self.lookup: asyncio.Future | None = None
        self._over = threading.Event()
        self._waited = False

    def start(self) -> None:
        """(On the event loop) start the look, once."""
        if self.lookup is None:
            self.lookup = asyncio.get_running_loop().create_task(self._look(),
                                                                 context=self._context)
            self.lookup.add_done_callback(_retrieve_exception)
            self.lookup.add_done_callback(lambda _: self._over.set())

    def wait_once(self, timeout_s: float) -> None:
        """(In the render thread) until the look is over, timeout_s at most; the first time
        only."""
        if self.lookup is not None and not self._waited:
            self._waited = True
            self._over.wait(timeout_s)

    def over(self) -> bool:
        """Whether the look has ended (found an answer or not, or failed)."""
        return self.lookup is not None and self.lookup.done()

    def found(self) -> RenderResult | None:
        """The earlier answer, once the look found one (None until then, or if it found none
        or failed)."""
        lookup = self.lookup
        if lookup is None or not lookup.done() or lookup.cancelled() or \
                lookup.exception() is not None:
            return None
        return lookup.result()

    async def settled(self) -> RenderResult | None:
        """(On the event loop) the look's outcome, started now if it was not: the earlier
        answer or None; what it raised, if it failed."""
        self.start()
        return await asyncio.shield(self.lookup)

    def cancel(self) -> None:
        if self.lookup is not None:
            self.lookup.cancel()  # (a no-op once it is over)
        self._over.set()


async def _looked_up(rt: Runtime, request: RenderRequest) -> RenderResult | None:
    with tracing.step_span("look for an earlier render"):
        return await _rendered_before(rt, join_uri(request.output_prefix, MANIFEST), request)


@dataclass
class Prepared:
    """A request with its inputs read: its part of a pipeline call (shot), the key of the
    requests it may share a call with, and how the engine runs such a call."""
    shot: Shot
    key: Hashable
    run: Callable[[RenderEngine, list[Shot]], list[list[Image.Image]]]


async def _inpaint_call(rt: Runtime, request: RenderRequest, _files: AdapterFiles) -> Prepared:
    image, mask = await asyncio.gather(rt.image_uncached(request.image,
                                                         carried=request.carried),
                                       rt.mask_image(request.mask, request.carried))
    model = request.model or rt.settings.model_id("inpainting")
    return Prepared(Shot(request.prompt, request.params, image=image, mask=mask),
                    ("inpaint", model, shared_params(request.params)),
                    lambda engine, shots: engine.inpaint_shots(model, shots))


async def _controlnet_call(rt: Runtime, request: RenderRequest,
                           _files: AdapterFiles) -> Prepared:
    control = await rt.image(request.control_image, carried=request.carried)
    try:
        controlnet = rt.settings.model_id(f"controlnet_{request.control}")
    except ValueError as exc:
        raise StageFailure(ErrorCode.MODEL_ERROR, str(exc)) from None
    model = request.model or rt.settings.model_id("diffusion")
    return Prepared(Shot(request.prompt, request.params, control=control),
                    ("controlnet", model, controlnet, shared_params(request.params)),
                    lambda engine, shots: engine.render_shots(model, controlnet, shots))


async def _avatar_call(rt: Runtime, request: RenderRequest, files: AdapterFiles) -> Prepared:
    """A person's adapter on the base model this worker serves. The adapter file comes from
    the local disk cache (storage on a miss); an adapter trained on another base model is
    refused, never applied to the wrong weights."""
    served = rt.settings.model_id("diffusion")
    if request.model != served:
        raise StageFailure(ErrorCode.MODEL_MISMATCH,
                           f"the adapter was trained on {request.model!r}; this GPU worker "
                           f"serves {served!r}")
    path = await files.local(request.adapter, rt.storage.get)
    scale = request.lora_scale
    return Prepared(Shot(request.prompt, request.params),
                    ("avatar", served, request.adapter_id, scale, shared_params(request.params)),
                    lambda engine, shots: engine.avatar_shots(served, request.adapter_id, path,
                                                              scale, shots))


# Each render task: how its inputs are read and which engine call it makes.
TASKS: dict[RenderTask, Callable[[Runtime, RenderRequest, AdapterFiles],
                                 Awaitable[Prepared]]] = {
    "avatar": _avatar_call,
    "inpaint": _inpaint_call,
    "controlnet": _controlnet_call,
    "controlnet_depth": _controlnet_call,  # controlnet with control="depth" (its default)
}


async def _inputs(rt: Runtime, request: RenderRequest, files: AdapterFiles) -> Prepared:
    """Read request's inputs; return its part of an engine call. A request too large to render
    (any producer can send one) fails its job before anything is read."""
    with tracing.step_span("read inputs"):
        bounded_size(request.params.width, request.params.height, rt.settings.render_limits,
                     request.params.num_images)
        return await TASKS[request.task](rt, request, files)


@dataclass
class Member:
    """A request in a batched call, and what the call found out about it."""
    request: RenderRequest
    prepared: Prepared
    waited_ms: float | None = None
    render_ms: float = 0.0
    # Why this member stopped while the call went on for the others (its job was cancelled).
    stopped: BaseException | None = field(default=None, repr=False)
    # The members of the engine call it is in now (the batch, or itself alone on a retry).
    company: list = field(default_factory=list, repr=False)
    # Its message, as the in-flight journal knows it (None outside a stage).
    in_hand: InHand | None = None
    # Its own model call left the device unusable (faults.fatal_device_error).
    broke_device: bool = False
    # The look for an earlier delivery's answer (None: none is made).
    earlier: EarlierRender | None = field(default=None, repr=False)

    def stop_if_answered_before(self) -> None:
        """Stop it (AnsweredBefore) once the look found an earlier delivery's answer."""
        if self.earlier is not None and self.stopped is None:
            done = self.earlier.found()
            if done is not None:
                self.stopped = AnsweredBefore(done)

    def may_report(self) -> bool:
        """Whether its progress may be told: not while the look for an earlier answer runs."""
        return self.earlier is None or self.earlier.over()


async def _render(rt: Runtime, engine: RenderEngine, request: RenderRequest,
                  prepared: Prepared, earlier: EarlierRender, batches: RenderBatches,
                  lane: str, meter: DutyMeter) -> RenderResult:
    member = Member(request, prepared, in_hand=message_in_hand(), earlier=earlier)
    # A request that was in flight when a worker died renders alone: if it is what breaks
    # the device, no request batched with it shares its count of deaths (faults.py).
    key = prepared.key if member.in_hand is None or not member.in_hand.deaths else \
        (prepared.key, "alone", request.job_id)
    with tracing.step_span("wait for the model and render"):
        images = await batches.run(lane, key, member,
                                   partial(_call_together, rt, engine, meter))
    done = await earlier.settled()  # (over by now, nearly always)
    if done is not None:  # found after the render's last step: its images are dropped
        return done
    render_ms, waited_ms = member.render_ms, member.waited_ms

    uris = [join_uri(request.output_prefix, f"{n}.png") for n in range(len(images))]
    result = RenderResult(job_id=request.job_id, images=uris, seed=request.params.seed,
                          render_ms=render_ms, wait_ms=waited_ms, context=request.context)

    async def store(n: int, png: bytes) -> None:
        await rt.storage.put(uris[n], png, "image/png",
                             metadata={**request.metadata, "job-id": request.job_id,
                                       "seed": str(request.params.seed + n)})

    # The manifest is written alongside the images, not after them (a storage round trip
    # off every job): a redelivery trusts it only once every image it names exists.
    manifest = result.model_copy(update={"context": {}, "wait_ms": None}
                                 ).model_dump_json().encode()
    with tracing.step_span("store images"):
        pngs = await asyncio.to_thread(lambda: [encode_png(image) for image in images])
        await asyncio.gather(*(store(n, png) for n, png in enumerate(pngs)),
                             rt.storage.put(join_uri(request.output_prefix, MANIFEST),
                                            manifest, "application/json"))
    # The small ones go with the reply too, for a stage that looks at them (reanalyze).
    result.carried = rt.to_carry(dict(zip(uris, pngs)))
    return result


async def _call_together(rt: Runtime, engine: RenderEngine, meter: DutyMeter,
                         members: list[Member]) -> list:
    """One engine call for members (on the model's turn): each member's images, or what
    failed it."""
    loop = asyncio.get_running_loop()
    for member in members:
        # Cancelled (or timed out) while it waited for the model, or the worker is handing
        # its work back, or answered before: it never starts, and it never shows as
        # `generating`.
        try:
            rt.check_cancelled(member.request.job_id)
        except (JobCancelled, HandedBack) as stopped:
            member.stopped = stopped
        member.stop_if_answered_before()
    starting = [m for m in members if m.stopped is None]
    for member in starting:
        request = member.request
        # The wait for the GPU ends here, at the model's turn (a request held in the worker
        # behind others still waits): what a user waiting on a makeover feels.
        member.waited_ms = round((time.time() - request.sent_at) * 1000, 2) \
            if request.sent_at else None
        # This worker holds the job now: from here, time without progress is a stall.
        await rt.job_event(request.job_id, JobEventKind.STATUS, status=JobStatus.GENERATING)
        member.prepared.shot.on_step = _step_reporter(
            rt, member, loop, ProgressPace(rt.settings.progress_interval_s), engine.previews)
    if not starting:
        return [m.stopped for m in members]
    for member in starting:  # (they run once the render thread below has started)
        if member.earlier is not None:
            member.earlier.start()
    started = time.perf_counter()
    try:
        with tracing.step_span("model", **{"restyle.batch_size": len(starting)}):
            outcomes = await asyncio.to_thread(_engine_call, engine, starting)
    finally:
        meter.model_ran(time.perf_counter() - started)
    render_ms = round((time.perf_counter() - started) * 1000, 2)
    for member in starting:
        member.render_ms = render_ms
    rendered = dict(zip(map(id, starting), outcomes))
    # A device left unusable: the worker exits, and the requests whose call broke it are
    # blamed for that (faults.py).
    blamed = [m.in_hand.spot for m in starting if m.broke_device and m.in_hand is not None]
    broke = next((m for m in starting if m.broke_device), None)
    if broke is not None:  # before anything else touches the broken device
        faults.render_failure(broke.request, rendered[id(broke)], blamed)
    return [_explained(m.request, rendered.get(id(m), m.stopped), blamed) for m in members]


def _explained(request: RenderRequest, outcome, blamed: list):
    """outcome, with a failure of the render itself told to the job (faults.render_failure;
    blamed: the messages whose call broke the device, if one did)."""
    return faults.render_failure(request, outcome, blamed) if _render_error(outcome) \
        else outcome


def _step_reporter(rt: Runtime, member: Member, loop, pace: ProgressPace,
                   previews: Previews | None = None):
    """member's progress callback (called from the render thread): its steps told at pace's
    pace, with a preview of the image so far when one is due. A cancelled job stops at the
    next denoising step, told or not: alone, the call stops (JobCancelled leaves the
    pipeline's loop); in company, it is dropped from the call's outcome and the others go
    on."""
    job_id = member.request.job_id
    report = tracing.bound_to_current(rt.job_event)  # progress belongs to the render's trace

    def on_step(step: int, total: int, latents=None) -> None:
        if member.earlier is not None and member.stopped is None:
            member.earlier.wait_once(LOOKUP_WAIT_S)
        member.stop_if_answered_before()
        if member.stopped is None:
            try:
                rt.check_cancelled(job_id)
            except JobCancelled as cancelled:
                member.stopped = cancelled
        if member.stopped is not None:
            if all(m.stopped is not None for m in member.company):
                raise member.stopped
            return
        if not member.may_report():  # (it may have been answered before: EarlierRender)
            return
        preview_due = previews is not None and latents is not None and \
            previews.due(step, total)
        if not pace.tell(with_preview=preview_due):
            return
        preview = None
        if preview_due:
            try:
                preview = previews.data_uri(latents())
            except Exception:  # a preview is a nicety: never the reason a render fails
                log.warning("no preview for job %s at step %d", job_id, step, exc_info=True)
        asyncio.run_coroutine_threadsafe(
            report(job_id, JobEventKind.PROGRESS, progress=Progress(step=step, total=total,
                                                                   preview=preview)),
            loop)
    return on_step


def _engine_call(engine: RenderEngine, members: list[Member]) -> list:
    """In the render thread: the members' images, or per member what failed it. A call of
    several that fails is made again one member at a time, so neither the batch's size nor
    one member's input fails the others."""
    for member in members:
        member.company = members
    try:
        images = members[0].prepared.run(engine, [m.prepared.shot for m in members])
    except HandedBack:  # the worker is shutting down: every member still wanted goes back
        return [m.stopped or HandedBack(m.request.job_id) for m in members]
    except (JobCancelled, AnsweredBefore):  # (raised only once every member stopped)
        return [m.stopped or JobCancelled(m.request.job_id) for m in members]
    except Exception as exc:
        if faults.fatal_device_error(exc):  # nothing runs after that
            for member in members:
                member.broke_device = member.stopped is None
            return [m.stopped or exc for m in members]
        if len(members) == 1:
            return [m.stopped or exc for m in members]
        log.warning("a batched render of %d requests failed (%s: %s); rendering them one by "
                    "one", len(members), type(exc).__name__, exc)
    else:
        return [m.stopped or found for m, found in zip(members, images)]
    # Outside the except block: the failed call's tensors, held by its traceback, are gone
    # before the first member renders alone (a batch too large for the device, most often).
    faults.free_memory()
    outcomes: list = []
    for member in members:
        broken = next((o for o in outcomes if isinstance(o, Exception)
                       and faults.fatal_device_error(o)), None)
        # After a call that broke the device, the rest are not run (nor blamed).
        outcomes.append(member.stopped or broken or _engine_call(engine, [member])[0])
    return outcomes


def _render_error(outcome) -> bool:
    """A failure of the render itself (what faults.render_failure explains to the job), as opposed
    to a cancellation, a hand-back or a bug (which the stage's error policy handles)."""
    return isinstance(outcome, (RuntimeError, ValueError, OSError, MemoryError)) and \
        not isinstance(outcome, (JobCancelled, HandedBack, StageFailure))


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
