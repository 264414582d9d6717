"""The uploads intake: every event on `restyle.uploads` goes to the pipeline it names (or whose
shape it has), which admits it: a room makeover job, a background-replacement batch, a Titan
body as a one-image batch, a conditioned generation.

Unreadable events and unknown pipelines go to the DLQ; when they name a job, that job fails
with the cause, so whoever waits on it hears why. A bug in an admission keeps the event (DLQ)."""
from __future__ import annotations

import asyncio
import logging

from agents.pipelines import for_upload
from schemas import ErrorCode, StageFailure
from streams.core.admission import refuse_upload
from streams.core.runtime import Runtime, json_object

log = logging.getLogger("restyle")


def register(rt: Runtime) -> None:
    @rt.app.agent(rt.topics["uploads"], name="intake")
    async def intake(stream):
        async for event in stream.events():
            try:
                await admit(rt, event.message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug must not stop the intake: keep the event
                log.exception("intake failed on %s@%s", event.message.topic,
                              event.message.offset)
                await rt.dead_letter(event.message, ErrorCode.INTERNAL,
                                     f"intake error: {type(exc).__name__}: {exc}")


async def admit(rt: Runtime, message) -> None:
    try:
        upload = json_object(message.value)
        pipeline = for_upload(upload)
    except StageFailure as failure:
        await refuse_upload(rt, message, None, failure)
        return
    await pipeline.admit(rt, message, upload)
