"""The agents in process (tests/inprocess.py stands in for the broker): the intake's dispatch
and refusals, a room makeover from analyze to completed with the GPU agent beside it, the
catalog's batch writes, and the agent factory's error policy. Real storage, real tiny models."""
from __future__ import annotations

import asyncio
import json

import pytest
from PIL import Image

from agents import intake
from agents.catalog import agents as catalog_agents
from agents.catalog.topics import CatalogTopics
from agents.condition import agents as condition_agents
from agents.condition.topics import ConditionTopics
from agents.makeover import agents as makeover_agents
from agents.makeover.topics import MakeoverTopics
from agents.models.stage_models import StageModels
from agents.pipelines import topic_sets
from gpu_agent import worker as gpu_worker
from gpu_agent.engine import RenderEngine
from schemas import CatalogEvent, CatalogItem, DeadLetter, JobEvent, StageFailure
from streams.adapters.index.local import LocalIndex
from streams.core.settings import Settings
from tests.inprocess import InProcessRuntime


@pytest.fixture
def settings(tmp_path, tiny_models, room_photos) -> Settings:
    return Settings(state_dir=tmp_path, storage_base=(tmp_path / "store").as_uri(),
                    file_roots=[room_photos[0].parent], models_dir=tiny_models,
                    default_steps=2, default_width=64, default_height=64,
                    retry_first_wait_s=0.01)


@pytest.fixture
def runtime(settings) -> InProcessRuntime:
    return InProcessRuntime(settings, topic_sets())


def events(rt: InProcessRuntime, topic: str) -> list[dict]:
    return [json.loads(m.value) for m in rt.sent(topic)]


def dead_letters(rt: InProcessRuntime) -> list[tuple[DeadLetter, bytes]]:
    """Each DLQ record's letter, and the original message it carries."""
    return [(DeadLetter.from_record(m.key, m.headers), m.value) for m in rt.sent(rt.topics.dlq)]


def test_the_intake_submits_a_makeover_and_refuses_what_it_cannot_read(runtime, room_photos):
    intake.register(runtime)
    upload = {"pipeline": "room_makeover", "job_id": "room-1",
              "image": room_photos[1].as_uri(), "style": "modern"}

    uploads = runtime.topics.uploads
    asyncio.run(runtime.deliver(uploads, json.dumps(upload).encode(), "room-1"))
    asyncio.run(runtime.deliver(uploads, b'{"job_id": "x1", "pipeline": "sculpt"}', "x1"))
    asyncio.run(runtime.deliver(uploads, b"{not json", "x2"))

    submitted, rejected = [JobEvent.model_validate(e)
                           for e in events(runtime, runtime.topics.job_events)]
    assert (submitted.kind, submitted.job.pipeline, submitted.job.style) == \
        ("submitted", "room_makeover", "modern")
    assert submitted.job.params.steps == 2  # the configured default, resolved at admission
    assert (rejected.job_id, rejected.kind, rejected.error.code) == \
        ("x1", "rejected", "unsupported_pipeline")
    letters = dead_letters(runtime)
    assert [(d.job_id, d.code) for d, _ in letters] == [("x1", "unsupported_pipeline"),
                                                        (None, "invalid_json")]
    assert json.loads(letters[0][1])["pipeline"] == "sculpt"  # the upload as it was sent


def run_makeover(runtime: InProcessRuntime, job_id: str, photo, style: str) -> None:
    """Upload a room photo for a makeover, then start the admitted job on its first stage,
    as the job tracker does."""
    upload = {"pipeline": "room_makeover", "job_id": job_id, "image": photo.as_uri(),
              "style": style}
    asyncio.run(runtime.deliver(runtime.topics.uploads, json.dumps(upload).encode(), job_id))
    job = JobEvent.model_validate(events(runtime, runtime.topics.job_events)[0]).job
    asyncio.run(runtime.deliver(runtime.topics_of(MakeoverTopics).analyze, job, job.job_id))


@pytest.mark.parametrize("chained", [True, False], ids=["chained", "split"])
def test_a_room_makeover_runs_from_analyze_to_completed_in_process(chained, settings,
                                                                 room_photos, tmp_path):
    # Chained (the default), analyze calls embed -> retrieve -> compose -> depth in-process;
    # split, each reads its own topic. The same stage functions either way.
    runtime = InProcessRuntime(settings.model_copy(update={"chain_stages": chained}),
                               topic_sets())
    intake.register(runtime)
    models = StageModels(settings)
    makeover_agents.register(runtime, models, LocalIndex(tmp_path / "index"))
    engine = RenderEngine(cache_size=1)
    gpu_worker.register(runtime, engine)
    run_makeover(runtime, "room-2", room_photos[1], "scandinavian")

    kinds = [(e["kind"], e.get("status")) for e in events(runtime, runtime.topics.job_events)]
    assert ("status", "analyzing") in kinds and ("status", "generating") in kinds
    assert kinds[-1] == ("completed", None)
    result = events(runtime, runtime.topics.job_events)[-1]["result"]
    assert result["pipeline"] == "room_makeover" and result["style"] == "scandinavian"
    assert set(result["timings_ms"]) >= {"analyze", "embed", "retrieve", "compose", "depth",
                                         "render", "reanalyze"}
    image = asyncio.run(runtime.storage.get(result["images"][0]["uri"]))
    assert image.startswith(b"\x89PNG")
    assert len(runtime.sent(runtime.topics.render)) == 1  # one render request, answered once
    # Each stage still says how long it took; only where the job travelled differs.
    assert all(result["timings_ms"][stage] > 0 for stage in ("embed", "depth"))
    topics = runtime.topics_of(MakeoverTopics)
    handed_over = [len(runtime.sent(t)) for t in (topics.embed, topics.retrieve,
                                                   topics.compose, topics.depth)]
    assert handed_over == ([0, 0, 0, 0] if chained else [1, 1, 1, 1])


def test_a_render_size_derived_too_large_fails_the_condition_job_before_any_resize(
        settings, tmp_path):
    sliver = tmp_path / "sliver.png"
    Image.new("RGB", (1, 1408), (120, 90, 60)).save(sliver)
    rt = InProcessRuntime(settings.model_copy(update={"file_roots": [tmp_path]}), topic_sets())
    intake.register(rt)
    condition_agents.register(rt, StageModels(settings), index=None)
    upload = {"pipeline": "condition", "job_id": "sliver-1", "image": sliver.as_uri(),
              "params": {"width": 1408, "conditioning": "canny"}}

    asyncio.run(rt.deliver(rt.topics.uploads, json.dumps(upload).encode(), "sliver-1"))
    (submitted,) = events(rt, rt.topics.job_events)
    assert submitted["kind"] == "submitted" and submitted["job"]["size"] == [1408, None]
    job = JobEvent.model_validate(submitted).job
    asyncio.run(rt.deliver(rt.topics_of(ConditionTopics).prepare, job, job.job_id))  # tracker

    _, analyzing, failed = events(rt, rt.topics.job_events)
    assert analyzing["status"] == "analyzing"
    assert (failed["kind"], failed["error"]["code"]) == ("failed", "invalid_params")
    assert "1408x1982464 px" in failed["error"]["message"]
    assert rt.sent(rt.topics.render) == []  # nothing rendered, nothing resized


class BrokenDepth:
    """A depth model with a bug: every estimate raises."""

    def __init__(self):
        self.calls = 0

    def estimate(self, image):
        self.calls += 1
        raise RuntimeError("the depth model lost its way")


def test_a_chained_stage_is_retried_and_fails_on_its_own(runtime, settings, room_photos,
                                                        tmp_path):
    # depth, the last stage of the chain, raises every time: it alone is run again
    # (RESTYLE_STAGE_ATTEMPTS), the stages before it are not, and the job fails naming it.
    models = StageModels(settings)
    models._loaded["depth"] = broken = BrokenDepth()
    intake.register(runtime)
    makeover_agents.register(runtime, models, LocalIndex(tmp_path / "index"))
    run_makeover(runtime, "room-3", room_photos[1], "modern")

    kinds = [(e["kind"], e.get("status")) for e in events(runtime, runtime.topics.job_events)]
    assert kinds == [("submitted", None), ("status", "analyzing"), ("failed", None)]
    failed = events(runtime, runtime.topics.job_events)[-1]
    assert failed["error"]["code"] == "internal_error"
    assert failed["error"]["message"] == ("depth stage error (attempt 3 of 3): "
                                          "RuntimeError: the depth model lost its way")
    assert broken.calls == 3
    assert runtime.sent(runtime.topics.render) == []


class RefusingIndex(LocalIndex):
    async def upsert(self, products, vectors):
        raise ConnectionError("index unreachable")


def test_a_failed_index_write_reaches_every_product_of_the_batch(runtime, tmp_path):
    catalog_agents.register(runtime, models=None, index=RefusingIndex(tmp_path / "index"))
    item = CatalogItem(event=CatalogEvent(product_id="p1", image="s3://b/p.jpg",
                                          ingest_id="run-1", ingest_total=1), vector=[1.0, 0.0])

    asyncio.run(runtime.deliver(runtime.topics_of(CatalogTopics).index, item, "p1"))

    (outcome,) = events(runtime, runtime.topics.catalog_events)
    assert (outcome["product_id"], outcome["outcome"]) == ("p1", "failed")
    assert outcome["error"]["message"] == \
        "index write failed: ConnectionError: index unreachable"


def test_a_bug_in_a_batch_handler_keeps_every_message_of_the_batch(runtime):
    async def buggy(items):
        raise KeyError("oops")

    runtime.stage_agent("catalog-index", buggy, CatalogItem,
                        topic=runtime.topics_of(CatalogTopics).index, batch=(10, 1.0))
    item = CatalogItem(event=CatalogEvent(product_id="p1", action="delete"))

    asyncio.run(runtime.deliver(runtime.topics_of(CatalogTopics).index, item, "p1"))
    asyncio.run(runtime.deliver(runtime.topics_of(CatalogTopics).index, b"[1, 2]", "p2"))

    letters = dead_letters(runtime)
    assert [(d.key, d.code) for d, _ in letters] == [("p1", "internal_error"),
                                                     ("p2", "invalid_json")]
    assert letters[0][0].reason == "catalog-index stage error: KeyError: 'oops'"
    assert letters[1][1] == b"[1, 2]"  # the original bytes, not an envelope
    assert (letters[1][0].source_topic, letters[1][0].attempts) == \
        (runtime.topics_of(CatalogTopics).index, 1)


def test_a_batch_that_fails_for_a_named_cause_is_dead_lettered_with_that_cause(runtime):
    async def unavailable(items):
        raise StageFailure("index_unavailable", "the index did not answer (5 attempts in 60 s)")

    runtime.stage_agent("catalog-index", unavailable, CatalogItem,
                        topic=runtime.topics_of(CatalogTopics).index, batch=(10, 1.0))
    item = CatalogItem(event=CatalogEvent(product_id="p1", action="delete"))
    asyncio.run(runtime.deliver(runtime.topics_of(CatalogTopics).index, item, "p1"))

    [(letter, _)] = dead_letters(runtime)
    assert (letter.key, letter.code, letter.reason) == (
        "p1", "index_unavailable", "the index did not answer (5 attempts in 60 s)")


def test_a_stage_failure_fails_the_job_and_a_bug_fails_it_with_internal_error(runtime):
    async def refuses(job):
        raise StageFailure("invalid_params", "width must be a multiple of 8")

    async def crashes(job):
        raise RuntimeError("model exploded")

    topics = runtime.topics_of(MakeoverTopics)
    runtime.stage_agent("analyze", refuses, JobEvent, topic=topics.analyze)
    runtime.stage_agent("embed", crashes, JobEvent, topic=topics.embed)
    for topic, job_id in ((topics.analyze, "j1"), (topics.embed, "j2")):
        asyncio.run(runtime.deliver(topic, JobEvent(job_id=job_id, kind="status", at=1.0),
                                    job_id))

    failed = [(e["job_id"], e["kind"], e["error"]["code"], e["error"]["message"])
              for e in events(runtime, runtime.topics.job_events)]
    assert failed == [("j1", "failed", "invalid_params", "width must be a multiple of 8"),
                      ("j2", "failed", "internal_error",
                       "embed stage error (attempt 3 of 3): RuntimeError: model exploded")]
    assert [e["error"]["attempts"] for e in events(runtime, runtime.topics.job_events)] == \
        [None, 3]


def test_a_stage_that_raises_for_a_moment_is_run_again_and_the_job_goes_on(runtime):
    tries = []

    async def flaky(job):
        tries.append(job.job_id)
        if len(tries) < 3:
            raise RuntimeError("CUDA driver busy")
        await runtime.job_event(job.job_id, "completed")

    topic = runtime.topics_of(MakeoverTopics).embed
    runtime.stage_agent("embed", flaky, JobEvent, topic=topic)
    asyncio.run(runtime.deliver(topic, JobEvent(job_id="j1", kind="status", at=1.0), "j1"))

    assert tries == ["j1"] * 3
    assert [(e["job_id"], e["kind"]) for e in events(runtime, runtime.topics.job_events)] == \
        [("j1", "completed")]


class RefusingTopic:
    """A topic on a broker that takes nothing: each send's acknowledgement is an error."""

    def __init__(self, name):
        self.name = name

    async def send(self, key=None, value=None, headers=None):
        from aiokafka.errors import KafkaTimeoutError

        refused = asyncio.get_running_loop().create_future()
        refused.set_exception(KafkaTimeoutError("no acknowledgement within 60 s"))
        return refused


def test_a_send_the_broker_never_acknowledges_fails_the_job_with_broker_unavailable(runtime):
    topics = runtime.topics_of(MakeoverTopics)
    runtime.channels[topics.embed] = RefusingTopic(topics.embed)

    async def analyze(job):
        await runtime.send(topics.embed, job.job_id, job)

    runtime.stage_agent("analyze", analyze, JobEvent, topic=topics.analyze)
    asyncio.run(runtime.deliver(topics.analyze, JobEvent(job_id="j1", kind="status", at=1.0),
                                "j1"))

    [failed] = events(runtime, runtime.topics.job_events)
    assert (failed["kind"], failed["error"]["code"]) == ("failed", "broker_unavailable")
    assert failed["error"]["message"] == (f"publishing to {topics.embed} failed: "
                                          f"KafkaTimeoutError: no acknowledgement within 60 s")


def test_a_dead_letter_the_broker_never_acknowledges_stops_the_worker_instead_of_losing_it(
        runtime):
    """An undecodable message is dead-lettered before it counts as done; a DLQ that takes
    nothing stops the worker (its message is not committed: the next worker has it), and the
    stage never sees the message."""
    topics = runtime.topics_of(MakeoverTopics)
    runtime.channels[runtime.topics.dlq] = RefusingTopic(runtime.topics.dlq)
    handled = []

    async def analyze(job):
        handled.append(job)

    runtime.stage_agent("analyze", analyze, JobEvent, topic=topics.analyze)
    asyncio.run(runtime.deliver(topics.analyze, b'{"job_id": "j1", "kind": ', "j1"))

    assert handled == [] and runtime.sent(runtime.topics.dlq) == []
    assert runtime.broken.startswith(f"{topics.analyze} offset 0 could not be dead-lettered "
                                     f"(publishing to {runtime.topics.dlq} failed")
    assert str(runtime.app.crashed) == runtime.broken


def test_an_upload_without_an_id_gets_the_same_id_when_redelivered_and_a_new_one_after_a_reset():
    """The id comes from the message (its place in the log, its timestamp, its bytes): the
    same message redelivered is the same job; a broker reset that reuses the offset with a
    new upload is a new job, not the old one's answer."""
    from streams.core.admission import derived_id
    from tests.inprocess import Message

    upload = b'{"pipeline": "room_makeover", "image": "s3://restyle/a.jpg", "style": "modern"}'
    first = Message("restyle.uploads", None, upload, partition=1, offset=7, timestamp=100.0)
    again = Message("restyle.uploads", None, upload, partition=1, offset=7, timestamp=100.0)
    after_reset = Message("restyle.uploads", None, upload, partition=1, offset=7,
                          timestamp=5000.0)
    other = Message("restyle.uploads", None, upload.replace(b"a.jpg", b"b.jpg"), partition=1,
                    offset=7, timestamp=100.0)
    assert derived_id(first) == derived_id(again)
    assert len({derived_id(first), derived_id(after_reset), derived_id(other)}) == 3


def test_an_original_too_large_for_the_dlq_is_kept_in_storage_and_named(settings, tmp_path):
    rt = InProcessRuntime(settings.model_copy(update={"dlq_max_inline_bytes": 1000}),
                          topic_sets())
    intake.register(rt)
    big = b'{"pipeline": "room_makeover", "job_id": "huge", "style": "' + b"x" * 5000 + b'"'
    asyncio.run(rt.deliver(rt.topics.uploads, big, "huge"))

    [(letter, value)] = dead_letters(rt)
    assert value == b"" and letter.code == "invalid_json"
    assert letter.original_uri == f"{settings.results_base}/dlq/{rt.topics.uploads}/0-0"
    assert asyncio.run(rt.storage.get(letter.original_uri)) == big
