"""The request/reply glue every pipeline uses with the GPU agent: a job asks for a render and
travels in the request's context; the reply brings it back with the render's time recorded."""
from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel

from schemas import RenderRequest, RenderResult
from streams.core.runtime import Runtime

J = TypeVar("J", bound=BaseModel)


async def request_render(rt: Runtime, job: BaseModel, reply_to: str, key: str | None = None,
                         batch: bool = False, **request) -> None:
    """Send job's render request; the answer comes back on the topic named reply_to, with the
    job as it is now in its context. request: the RenderRequest fields the job decides. key:
    what the request is partitioned by (the job id unless given): requests with one key go to
    one GPU worker. batch: nobody waits on this one image (a batch's), so it takes the batch
    lane when RESTYLE_RENDER_LANES is on (gpu_agent/turns.py)."""
    topic = rt.topics.render_batch if batch and rt.settings.render_lanes else rt.topics.render
    sent = await rt.send(topic, key or job.job_id, RenderRequest(
        job_id=job.job_id, tenant=job.tenant, reply_topic=reply_to,
        context=job.model_dump(mode="json"), **request))
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
