"""Batched renders: requests rendered together in one pipeline call draw what each draws
alone (same seed), and the worker groups only what may share a call."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest
from PIL import Image

from gpu_agent.batching import RenderBatches
from gpu_agent.engine import RenderEngine, Shot
from gpu_agent.turns import BATCH, INTERACTIVE, ModelTurns
from schemas.params import RenderParams
from tests.conftest import TEST_DEVICE

PARAMS = RenderParams(steps=2, guidance=7.5, controlnet_scale=1.0, seed=5, width=64, height=64,
                      negative_prompt="blurry", num_images=1)
LONG_PROMPT = ", ".join(["(a cozy room with a green velvet sofa)1.1"] * 12)  # > 77 tokens


@pytest.fixture(scope="module")
def engine(tiny_models):
    return RenderEngine(TEST_DEVICE, "float32", cache_size=3)


def shots() -> list[Shot]:
    control = Image.radial_gradient("L").convert("RGB")
    room = Image.linear_gradient("L").convert("RGB").resize((96, 80))
    return [Shot("(a cozy room)1.0, (green sofa)0.8", PARAMS, control=control),
            Shot("a scandinavian room", PARAMS.model_copy(update={
                "seed": 9, "num_images": 2, "negative_prompt": "dark"}), control=room),
            Shot(LONG_PROMPT, PARAMS.model_copy(update={"seed": 11}), control=control)]


def assert_close(together: list[Image.Image], alone: list[Image.Image]) -> None:
    assert len(together) == len(alone)
    for a, b in zip(together, alone):
        difference = np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16))
        assert difference.max() <= 2, difference.max()  # float error in a batched matmul


def test_a_batched_controlnet_render_draws_what_each_request_draws_alone(engine, tiny_models):
    model, controlnet = str(tiny_models / "diffusion"), str(tiny_models / "controlnet_depth")
    together = engine.render_shots(model, controlnet, shots())
    for shot, images in zip(shots(), together):
        alone = engine.render(model, controlnet, shot.prompt, shot.control, shot.params)
        assert_close(images, alone)
    assert [len(images) for images in together] == [1, 2, 1]


def test_a_batched_inpaint_draws_what_each_request_draws_alone(engine, tiny_models):
    model = str(tiny_models / "inpainting")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 64, 32))
    together_shots = [Shot(s.prompt, s.params, image=s.control, mask=mask) for s in shots()]
    together = engine.inpaint_shots(model, together_shots)
    for shot, images in zip(together_shots, together):
        assert_close(images, engine.inpaint(model, shot.prompt, shot.image, mask, shot.params))


def test_requests_that_differ_in_size_or_steps_are_never_rendered_together(engine, tiny_models):
    bigger = Shot("a room", PARAMS.model_copy(update={"width": 72}),
                  control=Image.new("RGB", (64, 64)))
    with pytest.raises(ValueError, match="share size, steps"):
        engine.render_shots(str(tiny_models / "diffusion"), str(tiny_models / "controlnet_depth"),
                            [shots()[0], bigger])


class Model:
    """A stand-in for the engine call, recording what was called together (the batching
    logic is tested alone here; the engine above and the e2e suite render for real)."""

    def __init__(self, seconds: float = 0.05):
        self.calls: list[list[str]] = []
        self.seconds = seconds

    async def __call__(self, members: list[str]) -> list:
        self.calls.append(list(members))
        await asyncio.sleep(self.seconds)
        return [ValueError(m) if m.startswith("bad") else m.upper() for m in members]


def test_requests_queued_behind_a_busy_model_share_its_next_call():
    async def scenario():
        batches, model = RenderBatches(ModelTurns(), max_batch=3), Model()
        names = ["a", "b", "c", "d", "e"]
        runs = [asyncio.ensure_future(batches.run(BATCH, "key", name, model))
                for name in names]
        results = await asyncio.gather(*runs)
        return model.calls, results

    calls, results = asyncio.run(scenario())
    # "a" finds the model free and renders alone; b, c, d queue behind it together (at most
    # 3); e waits for the next call. Each gets its own outcome.
    assert calls == [["a"], ["b", "c", "d"], ["e"]]
    assert results == ["A", "B", "C", "D", "E"]


def test_only_compatible_requests_of_one_lane_share_a_call_and_failures_stay_apart():
    async def scenario():
        batches, model = RenderBatches(ModelTurns(), max_batch=4), Model()
        first = asyncio.ensure_future(batches.run(INTERACTIVE, "key", "first", model))
        await asyncio.sleep(0)
        queued = [batches.run(BATCH, "key", "x", model),
                  batches.run(BATCH, "other", "y", model),
                  batches.run(INTERACTIVE, "key", "bad-z", model),
                  batches.run(INTERACTIVE, "key", "w", model)]
        outcomes = await asyncio.gather(first, *queued, return_exceptions=True)
        return model.calls, outcomes

    calls, outcomes = asyncio.run(scenario())
    assert sorted(map(sorted, calls)) == [["bad-z", "w"], ["first"], ["x"], ["y"]]
    assert outcomes[:3] == ["FIRST", "X", "Y"]
    assert isinstance(outcomes[3], ValueError) and outcomes[4] == "W"


def test_a_lone_request_waits_at_most_the_maximum_wait_for_company():
    async def scenario(max_wait_s: float, late_s: float, max_batch: int = 4):
        batches = RenderBatches(ModelTurns(), max_batch=max_batch, max_wait_s=max_wait_s)
        model = Model(0.01)
        loop = asyncio.get_running_loop()
        started = loop.time()
        first = asyncio.ensure_future(batches.run(BATCH, "key", "a", model))
        finished = []
        first.add_done_callback(lambda _: finished.append(loop.time() - started))
        await asyncio.sleep(late_s)
        await asyncio.gather(first, batches.run(BATCH, "key", "b", model))
        return model.calls, finished[0]

    calls, took = asyncio.run(scenario(max_wait_s=0.3, late_s=0.05, max_batch=2))
    assert calls == [["a", "b"]] and took < 0.3  # company filled the batch within the wait
    calls, took = asyncio.run(scenario(max_wait_s=0.1, late_s=0.25))
    assert calls == [["a"], ["b"]] and 0.1 <= took < 0.25  # it waited 0.1 s, then went alone
    calls, took = asyncio.run(scenario(max_wait_s=0.0, late_s=0.05))
    assert calls == [["a"], ["b"]] and took < 0.05  # by default nobody waits


def test_members_of_a_leader_that_stopped_queue_again():
    async def scenario():
        turns, model = ModelTurns(), Model()
        batches = RenderBatches(turns, max_batch=4)
        busy = asyncio.ensure_future(batches.run(BATCH, "other", "busy", model))
        await asyncio.sleep(0)
        leader = asyncio.ensure_future(batches.run(BATCH, "key", "leader", model))
        await asyncio.sleep(0)
        member = asyncio.ensure_future(batches.run(BATCH, "key", "member", model))
        await asyncio.sleep(0)
        leader.cancel()  # its task stops (a worker shutting down) before its turn
        return await member, await busy, model.calls

    member, busy, calls = asyncio.run(scenario())
    assert (member, busy) == ("MEMBER", "BUSY") and calls == [["busy"], ["member"]]


class CallCountingEngine(RenderEngine):
    """The real engine, noting how many requests each pipeline call rendered."""

    def __init__(self):
        super().__init__(TEST_DEVICE, "float32", cache_size=1)
        self.calls: list[int] = []

    def render_shots(self, model, controlnet, shots):
        self.calls.append(len(shots))
        return super().render_shots(model, controlnet, shots)


@pytest.fixture
def control_photos(tmp_path) -> list:
    """A control image on disk, where the worker may read it (RESTYLE_FILE_ROOTS)."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    Image.radial_gradient("L").convert("RGB").save(folder / "control.png")
    return [folder / "control.png"]


def deliver_at_once(tmp_path, tiny_models, room_photos, make_engine, count: int,
                    beside=None, journal=None, **settings):
    """count render requests (job ids room-N, each its own seed, the job id as its prompt)
    handled at the same moment by a GPU worker on make_engine(runtime), in process (with
    beside(runtime), a coroutine, running alongside; journal: the worker's in-flight journal;
    settings: Settings fields besides the test's)."""
    from agents.pipelines import topic_sets
    from gpu_agent import worker as gpu_worker
    from streams.core.settings import Settings
    from tests.gpu_agent.test_device_faults import request
    from tests.inprocess import Event, InProcessRuntime, Message

    settings = Settings(state_dir=tmp_path, storage_base=(tmp_path / "store").as_uri(),
                        file_roots=[room_photos[0].parent], models_dir=tiny_models,
                        # Every step told, as the tests here count them (gpu_agent/progress.py).
                        **{"render_max_batch": 4, "progress_interval_s": 0, **settings})
    rt = InProcessRuntime(settings, topic_sets(), journal)
    gpu_worker.register(rt, make_engine(rt))
    [agent] = rt.agents[rt.topics.render]
    wanted = [request(rt, f"room-{n}", room_photos) for n in range(count)]
    for n, one in enumerate(wanted):
        one.params.seed, one.prompt = 100 + n, one.job_id

    async def all_at_once():
        handled = (rt.handle(agent.name, Event(Message(
            rt.topics.render, one.job_id.encode(), one.model_dump_json().encode(), offset=n)),
            agent.model, agent.handler) for n, one in enumerate(wanted))
        await asyncio.gather(*([beside(rt)] if beside else []), *handled)

    asyncio.run(all_at_once())
    return rt, wanted


def replies_and_progress(rt) -> tuple[dict, list[str]]:
    import json

    replies = {r["job_id"]: r for r in (json.loads(m.value) for m in rt.sent("test.replies"))}
    events = [json.loads(m.value) for m in rt.sent(rt.topics.job_events)]
    return replies, [e["job_id"] for e in events if e["kind"] == "progress"]


def test_the_gpu_worker_renders_requests_waiting_together_in_one_call(tmp_path, tiny_models,
                                                                      control_photos):
    engine = CallCountingEngine()
    rt, wanted = deliver_at_once(tmp_path, tiny_models, control_photos, lambda _: engine, 5)
    # The first found the model free and went alone; the rest queued behind it and shared
    # calls of at most 4.
    assert sum(engine.calls) == 5 and len(engine.calls) < 5 and max(engine.calls) <= 4
    replies, progress = replies_and_progress(rt)
    assert set(replies) == {one.job_id for one in wanted}
    for one in wanted:  # each its own images, seed and progress
        reply = replies[one.job_id]
        assert reply["seed"] == one.params.seed and len(reply["images"]) == 1
        assert asyncio.run(rt.storage.get(reply["images"][0])).startswith(b"\x89PNG")
    assert sorted(progress) == sorted(o.job_id for o in wanted for _ in (1, 2))


class CancellingEngine(CallCountingEngine):
    """Cancels the second request of the first shared call as that call starts (what
    `DELETE /jobs/{id}` does while a batch renders)."""

    def __init__(self, runtime):
        super().__init__()
        self.runtime = runtime
        self.cancelled: str | None = None

    def render_shots(self, model, controlnet, shots):
        if len(shots) > 1 and self.cancelled is None:
            self.cancel(shots[1].prompt)  # the job id (deliver_at_once)
        return super().render_shots(model, controlnet, shots)

    def cancel(self, job_id: str) -> None:
        from schemas.jobs import Cancellation

        self.cancelled = job_id
        self.runtime.cancellations.records[job_id] = Cancellation(job_id=job_id, by="tests",
                                                                  at=0.0)


def test_a_job_cancelled_during_a_batched_render_drops_out_and_the_others_finish(
        tmp_path, tiny_models, control_photos):
    engines = []
    rt, wanted = deliver_at_once(tmp_path, tiny_models, control_photos,
                                 lambda rt: engines.append(CancellingEngine(rt)) or engines[0], 4)
    [engine] = engines
    assert engine.cancelled is not None and max(engine.calls) > 1
    replies, progress = replies_and_progress(rt)
    assert set(replies) == {o.job_id for o in wanted} - {engine.cancelled}
    assert engine.cancelled not in progress  # stopped at its first step
    assert not asyncio.run(rt.storage.exists(
        f"{rt.settings.results_base}/results/{engine.cancelled}/0.png"))


class BatchFailingEngine(CancellingEngine):
    """A shared call fails (as one too large for the device would), and its second request is
    cancelled meanwhile."""

    def render_shots(self, model, controlnet, shots):
        if len(shots) > 1:
            self.calls.append(len(shots))
            if self.cancelled is None:
                self.cancel(shots[1].prompt)
            raise RuntimeError("CUDA out of memory. Tried to allocate 4.00 GiB")
        return super().render_shots(model, controlnet, shots)


def test_a_batch_that_fails_is_rendered_one_by_one_without_the_cancelled_job(
        tmp_path, tiny_models, control_photos):
    engines = []
    rt, wanted = deliver_at_once(tmp_path, tiny_models, control_photos,
                                 lambda rt: engines.append(BatchFailingEngine(rt)) or engines[0],
                                 4)
    [engine] = engines
    assert max(engine.calls) > 1  # a shared call was tried, and failed
    replies, _ = replies_and_progress(rt)
    # Every other request was rendered alone and answered; the cancelled one was not.
    assert set(replies) == {o.job_id for o in wanted} - {engine.cancelled}
    assert all(len(r["images"]) == 1 for r in replies.values())


class CancelsOneQueuedBehind(CallCountingEngine):
    """While the first request renders alone, the job of one queued behind it is cancelled."""

    def __init__(self, runtime, candidates: list[str]):
        super().__init__()
        self.runtime, self.candidates = runtime, candidates
        self.victim: str | None = None
        self.rendered: list[str] = []

    def render_shots(self, model, controlnet, shots):
        if not self.calls:  # (which request comes first depends on the threads that read them)
            first = {shot.prompt for shot in shots}
            self.victim = next(job_id for job_id in self.candidates if job_id not in first)
            cancel(self.runtime, self.victim)
        self.rendered += [shot.prompt for shot in shots]  # the job ids (deliver_at_once)
        return super().render_shots(model, controlnet, shots)


def cancel(runtime, job_id: str) -> None:
    """What every worker reads from the cancellations topic after `DELETE /jobs/{id}`."""
    from schemas.jobs import Cancellation

    runtime.cancellations.apply(job_id.encode(), Cancellation(
        job_id=job_id, by="tests", at=0.0).model_dump_json().encode())


def statuses(rt, job_id: str) -> list[str]:
    import json

    events = [json.loads(m.value) for m in rt.sent(rt.topics.job_events)]
    return [e["status"] for e in events if e["job_id"] == job_id and e["kind"] == "status"]


def test_a_job_cancelled_while_it_waits_for_the_model_never_starts(tmp_path, tiny_models,
                                                                   control_photos):
    engines = []
    rt, wanted = deliver_at_once(
        tmp_path, tiny_models, control_photos,
        lambda rt: engines.append(CancelsOneQueuedBehind(
            rt, [f"room-{n}" for n in (2, 3, 1, 0)])) or engines[0], 4)
    [engine] = engines
    victim = engine.victim
    assert victim and victim not in engine.rendered
    replies, progress = replies_and_progress(rt)
    assert set(replies) == {o.job_id for o in wanted} - {victim}
    # Never shown as `generating`: it never held the model.
    assert "generating" not in statuses(rt, victim) and victim not in progress
    assert all("generating" in statuses(rt, o.job_id) for o in wanted if o.job_id != victim)


def test_a_worker_that_has_just_started_reads_the_cancellations_before_its_first_render(
        tmp_path, tiny_models, control_photos):
    """room-1 was cancelled before this worker started: its request, already on the render
    topic, is not rendered, though the worker reads the cancellations only after the
    requests arrive."""
    engine = CallCountingEngine()

    async def reader_catching_up(rt):
        rt.cancellations.running = True  # as the worker's reader task is
        await asyncio.sleep(0.5)
        cancel(rt, "room-1")
        rt.cancellations.read_once.set()

    rt, wanted = deliver_at_once(tmp_path, tiny_models, control_photos, lambda _: engine, 3,
                                 beside=reader_catching_up)
    replies, _ = replies_and_progress(rt)
    assert set(replies) == {"room-0", "room-2"}
    assert sum(engine.calls) == 2 and statuses(rt, "room-1") == []
