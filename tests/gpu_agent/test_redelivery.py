"""A render request delivered twice while the first delivery is still rendering (a GPU
worker prefetches several requests: both are in hand before either has stored its manifest)
is rendered once; both deliveries are answered with that render. In process, with the real
engine and tiny models; the engine counts its calls."""
from __future__ import annotations

import asyncio
import json

from agents.pipelines import topic_sets
from gpu_agent import worker as gpu_worker
from gpu_agent.engine import RenderEngine
from streams.core.settings import Settings
from tests.gpu_agent.test_device_faults import request
from tests.inprocess import Event, InProcessRuntime, Message


class CountingEngine(RenderEngine):
    def __init__(self):
        super().__init__(cache_size=1)
        self.renders = 0

    def render_shots(self, model, controlnet, shots):
        self.renders += len(shots)
        return super().render_shots(model, controlnet, shots)


def test_a_request_delivered_twice_at_once_is_rendered_once(tmp_path, tiny_models, room_photos):
    settings = Settings(state_dir=tmp_path, storage_base=(tmp_path / "store").as_uri(),
                        file_roots=[room_photos[0].parent], models_dir=tiny_models)
    rt = InProcessRuntime(settings, topic_sets())
    engine = CountingEngine()
    gpu_worker.register(rt, engine)
    [agent] = rt.agents[rt.topics.render]
    wanted = request(rt, "twice", room_photos).model_dump_json().encode()

    async def both():
        deliveries = [Event(Message(rt.topics.render, b"twice", wanted, offset=n))
                      for n in (7, 8)]
        await asyncio.gather(*(rt.handle(agent.name, event, agent.model, agent.handler)
                               for event in deliveries))

    asyncio.run(both())
    replies = [json.loads(m.value) for m in rt.sent("test.replies")]
    assert engine.renders == 1
    assert len(replies) == 2 and replies[0]["images"] == replies[1]["images"]
    assert replies[0]["render_ms"] == replies[1]["render_ms"]  # the same render, twice told
