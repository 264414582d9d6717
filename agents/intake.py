"""The uploads intake: every event on `restyle.uploads` goes to the pipeline it names (or whose
shape it has), which admits it: a room makeover job, a background-replacement batch, a Titan
body as a one-image batch, a conditioned generation.

Unreadable events and unknown pipelines go to the DLQ; when they name a job, that job fails
with the cause, so whoever waits on it hears why. A bug in an admission keeps the event (DLQ)."""
from __future__ import annotations

from agents.pipelines import for_upload
from schemas import StageFailure
from streams.core.admission import refuse_upload
from streams.core.runtime import Runtime, json_object


def register(rt: Runtime) -> None:
    async def intake(message) -> None:
        await admit(rt, message)

    # The raw message: each pipeline validates its own uploads.
    rt.stage_agent("intake", intake, None, topic=rt.topics.uploads)


async def admit(rt: Runtime, message) -> None:
    upload = None
    try:
        upload = json_object(message.value)
        pipeline = for_upload(upload)
    except StageFailure as failure:
        await refuse_upload(rt, message, upload, None, failure)
        return
    await pipeline.admit(rt, message, upload)
