"""The uploads intake: every event on `restyle.uploads` goes to the pipeline it names (or whose
shape it has), which admits it: a room makeover job, a background-replacement batch, a Titan
body as a one-image batch, a conditioned generation, an avatar training or generation. An event
`{"cancel": job_id}` cancels a job instead, `{"cancel_batch": batch_id}` a batch.

Unreadable events and unknown pipelines go to the DLQ; when they name a job, that job fails
with the cause, so whoever waits on it hears why. A bug in an admission keeps the event (DLQ)."""
from __future__ import annotations

import time

from agents.pipelines import for_upload
from schemas import JobEvent, JobEventKind, StageFailure
from schemas.background import BatchEvent, BatchEventKind
from schemas.events import CancelRequest
from streams.core.admission import refuse_upload
from streams.core.runtime import Runtime, json_object, validate


def register(rt: Runtime) -> None:
    async def intake(message) -> None:
        await admit(rt, message)

    # The raw message: each pipeline validates its own uploads.
    rt.stage_agent("intake", intake, None, topic=rt.topics.uploads)


async def admit(rt: Runtime, message) -> None:
    upload = None
    try:
        upload = json_object(message.value)
        if ("cancel" in upload or "cancel_batch" in upload) and "pipeline" not in upload:
            await cancel(rt, validate(upload, CancelRequest))
            return
        pipeline = for_upload(upload)
    except StageFailure as failure:
        await refuse_upload(rt, message, upload, None, failure)
        return
    await pipeline.admit(rt, message, upload)


async def cancel(rt: Runtime, request: CancelRequest) -> None:
    """The tracker ends the job (or batch) cancelled, unless it already ended or is another
    tenant's."""
    by = f"an upstream system ({request.by})" if request.by else "an upstream system"
    if request.cancel_batch is not None:
        await rt.send(rt.topics.batch_events, request.cancel_batch, BatchEvent(
            batch_id=request.cancel_batch, kind=BatchEventKind.CANCEL, at=time.time(),
            tenant=request.tenant, by=by), acknowledged=True)
        return
    await rt.send(rt.topics.job_events, request.cancel, JobEvent(
        job_id=request.cancel, kind=JobEventKind.CANCELLED, at=time.time(),
        tenant=request.tenant, by=by), acknowledged=True)
