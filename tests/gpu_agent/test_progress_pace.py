"""A render tells its progress at most every RESTYLE_PROGRESS_INTERVAL_S, previews always, slow
steps every time (gpu_agent/progress.py)."""
from __future__ import annotations

import asyncio
import json

import pytest

from agents.pipelines import topic_sets
from gpu_agent import worker as gpu_worker
from gpu_agent.engine import RenderEngine
from gpu_agent.previews import Previews
from gpu_agent.progress import ProgressPace
from schemas import RenderParams, RenderRequest
from streams.core.settings import Settings
from tests.conftest import TEST_DEVICE
from tests.inprocess import InProcessRuntime


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_steps_closer_than_the_interval_are_not_told_but_previews_and_slow_steps_are():
    clock = Clock()
    pace = ProgressPace(0.25, clock)  # made as the render's `generating` status goes out
    told = []
    # (seconds since the step before, whether it carries a preview)
    for gap, preview in [(0.05, False), (0.05, False), (0.2, False), (0.05, True),
                         (0.05, False), (1.0, False), (1.0, False)]:
        clock.now += gap
        told.append(pace.tell(with_preview=preview))
    assert told == [False, False, True, True, False, True, True]


def test_an_interval_of_zero_tells_every_step():
    clock = Clock()
    pace = ProgressPace(0, clock)
    assert all(pace.tell() for _ in range(5))


def render(tmp_path, tiny_models, room_photos, steps: int, **settings) -> list[dict]:
    """One render request of steps steps through a GPU worker (in process, the real engine and
    tiny models): the job events it sent, after its reply."""
    rt = InProcessRuntime(Settings(state_dir=tmp_path, storage_base=(tmp_path / "store").as_uri(),
                                   file_roots=[room_photos[0].parent], models_dir=tiny_models,
                                   **settings), topic_sets())
    previews = Previews(rt.settings.preview_every_steps, rt.settings.preview_size)
    gpu_worker.register(rt, RenderEngine(TEST_DEVICE, "float32", cache_size=1,
                                         previews=previews))
    request = RenderRequest(
        job_id="paced", prompt="a bright room", task="controlnet", control="depth",
        control_image=room_photos[0].as_uri(),
        params=RenderParams(steps=steps, width=64, height=64, num_images=1, seed=3, guidance=7.5,
                            controlnet_scale=1.0, negative_prompt=""),
        output_prefix=f"{rt.settings.results_base}/results/paced", reply_topic="test.replies")
    asyncio.run(rt.deliver(rt.topics.render, request, request.job_id))
    [reply] = [json.loads(m.value) for m in rt.sent("test.replies")]
    assert reply["job_id"] == "paced" and len(reply["images"]) == 1
    return [json.loads(m.value) for m in rt.sent(rt.topics.job_events)]


@pytest.mark.parametrize("interval, told", [(0, [1, 2, 3, 4]), (600, [2])])
def test_a_fast_render_tells_only_the_steps_its_pace_allows(tmp_path, tiny_models, room_photos,
                                                           interval, told):
    # Previews every second step; no preview on the last step (the image follows at once).
    events = render(tmp_path, tiny_models, room_photos, steps=4, progress_interval_s=interval,
                    preview_every_steps=2)
    assert [e["status"] for e in events if e["kind"] == "status"] == ["generating"]
    progress = [e["progress"] for e in events if e["kind"] == "progress"]
    assert [p["step"] for p in progress] == told
    # Whatever the pace, each preview goes out.
    assert [p["step"] for p in progress if p.get("preview")] == [2]
