"""The request/reply glue every pipeline uses with the GPU agent: a job asks for a render and
travels in the request's context; the reply brings it back with the render's time recorded."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Iterable, TypeVar

from pydantic import BaseModel

from schemas import RenderRequest, RenderResult
from streams.core.runtime import Runtime

J = TypeVar("J", bound=BaseModel)


@dataclass(frozen=True)
class MadeImage:
    """An image a stage made for the render (a control map, an image and mask to repaint) or
    for the job's result, encoded, and where it is stored."""
    uri: str
    png: bytes
    metadata: dict[str, str] = field(default_factory=dict)


async def request_render(rt: Runtime, job: BaseModel, reply_to: str, key: str | None = None,
                         batch: bool = False, made: Iterable[MadeImage] = (),
                         **request) -> None:
    """Store the images the stage made, then send job's render request; the answer comes back
    on the topic named reply_to, with the job as it is now in its context. request: the
    RenderRequest fields the job decides. key: what the request is partitioned by (the job id
    unless given): requests with one key go to one GPU worker. batch: nobody waits on this one
    image (a batch's), so it takes the batch lane when RESTYLE_RENDER_LANES is on
    (gpu_agent/turns.py). made: stored before the request goes (what a later stage or the
    job's result names exists once the render is asked for), and those of them the request
    names (its inputs) carried in it when small (RESTYLE_CARRY_IMAGE_MAX_BYTES), so the GPU
    worker need not read them back."""
    made = list(made)
    await asyncio.gather(*(rt.storage.put(image.uri, image.png, "image/png",
                                          metadata=image.metadata or None) for image in made))
    inputs = {request.get(name) for name in ("control_image", "image", "mask")}
    carried = rt.to_carry({image.uri: image.png for image in made if image.uri in inputs})
    topic = rt.topics.render_batch if batch and rt.settings.render_lanes else rt.topics.render
    sent = await rt.send(topic, key or job.job_id, RenderRequest(
        job_id=job.job_id, tenant=job.tenant, reply_topic=reply_to,
        context=job.model_dump(mode="json"), carried=carried, **request))
    # After the request (a producer has one request in flight per broker: the status would
    # hold the render back a round trip), with where it waits. The GPU worker says
    # `generating` when it takes it, so a slow queue is never mistaken for a stalled job.
    await rt.queued_for_gpu(job.job_id, sent)


def rendered(reply: RenderResult, model: type[J]) -> J:
    """The job a render reply answers, with how long it rendered and waited for the GPU."""
    job = model.model_validate(reply.context)
    job.timings_ms["render"] = reply.render_ms
    if reply.wait_ms is not None:
        job.waits_ms["render"] = reply.wait_ms
    return job
