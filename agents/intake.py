"""The uploads intake: every event on `restyle.uploads` is validated and admitted to its pipeline
(a room makeover job, a background-replacement batch, a Titan body as a one-image batch, or a
conditioned generation).
Unreadable events go to the DLQ; when they name a job or batch, that job or batch fails with
the cause, so whoever waits on it hears why."""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import re
import time

from agents.background.agents import refuse_batch, submit_batch
from agents.background.titan import titan_batch
from agents.condition import bucket_events
from agents.makeover import stages as makeover
from schemas import ErrorCode, JobEventKind, MakeoverUpload, StageFailure
from schemas.background import BATCH_ID_PATTERN, BackgroundBatch
from schemas.conditioning import ConditionUpload
from schemas.ids import JOB_ID_PATTERN
from schemas.titan import TitanRequest
from schemas.uris import parse_uri
from streams.core.runtime import Runtime, decode

log = logging.getLogger("restyle")
_rng = random.SystemRandom()


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


def upload_kind(raw) -> str | None:
    """Which pipeline an upload is for, peeked before validating it against that pipeline."""
    try:
        data = json.loads(raw)
    except Exception:
        return None
    if not isinstance(data, dict):
        return None
    if "taskType" in data:
        return "titan"
    return data.get("pipeline") if isinstance(data.get("pipeline"), str) else None


async def admit(rt: Runtime, message) -> None:
    kind = upload_kind(message.value)
    if kind == "background_replace":
        await admit_batch(rt, message)
    elif kind == "condition":
        await admit_condition(rt, message)
    elif kind == "titan":
        await admit_titan(rt, message)
    else:
        await admit_makeover(rt, message)


async def admit_job(rt: Runtime, message, model, make_job) -> None:
    """Validate a one-job upload, give it a job_id, and hand it to the tracker (which starts it
    once). make_job(upload, job_id) checks what the schema cannot and builds the job."""
    try:
        upload = decode(message.value, model)
    except StageFailure as failure:
        job_id = _readable(message.value, "job_id", JOB_ID_PATTERN)
        await rt.dead_letter(message, failure.error.code, failure.error.message, job_id)
        if job_id:
            await rt.fail(job_id, failure.error, kind=JobEventKind.REJECTED)
        return
    job_id = upload.job_id or derived_id(message)
    try:
        job = make_job(upload, job_id)
    except StageFailure as failure:
        await rt.fail(job_id, failure.error, upload.tenant, kind=JobEventKind.REJECTED)
        return
    await rt.job_event(job_id, JobEventKind.SUBMITTED, tenant=upload.tenant, job=job)


async def admit_makeover(rt: Runtime, message) -> None:
    def make_job(upload: MakeoverUpload, job_id: str):
        parse_uri(upload.image, rt.storage.file_roots)
        return makeover.admit(upload, job_id, rt.settings, time.time(), _rng)

    await admit_job(rt, message, MakeoverUpload, make_job)


async def admit_condition(rt: Runtime, message) -> None:
    """One image to condition on, straight from the uploads topic (no bucket rule)."""
    def make_job(upload: ConditionUpload, job_id: str):
        parse_uri(upload.image, rt.storage.file_roots)
        if upload.output:
            parse_uri(upload.output + "x", rt.storage.file_roots)
        return bucket_events.job_for_upload(upload, job_id, rt.settings, _rng, time.time())

    await admit_job(rt, message, ConditionUpload, make_job)


async def admit_batch(rt: Runtime, message) -> None:
    try:
        batch = decode(message.value, BackgroundBatch)
    except StageFailure as failure:
        batch_id = _readable(message.value, "batch_id", BATCH_ID_PATTERN) or \
            _key(message, BATCH_ID_PATTERN)
        await rt.dead_letter(message, failure.error.code, failure.error.message, batch_id)
        if batch_id:
            await refuse_batch(rt, batch_id, failure.error)
        return
    batch_id = batch.batch_id or _key(message, BATCH_ID_PATTERN) or derived_id(message)
    await submit_batch(rt, batch.model_copy(update={"batch_id": batch_id}))


async def admit_titan(rt: Runtime, message) -> None:
    """A Titan body on the uploads topic: the message key (if it is a valid id) names the batch;
    its one image's job id is in the batch's report and on restyle.results."""
    batch_id = _key(message, BATCH_ID_PATTERN)
    try:
        request = decode(message.value, TitanRequest)
    except StageFailure as failure:
        await rt.dead_letter(message, failure.error.code, failure.error.message, batch_id)
        if batch_id:
            await refuse_batch(rt, batch_id, failure.error)
        return
    batch_id = batch_id or derived_id(message)
    try:
        batch = await titan_batch(rt.storage, rt.settings, request, batch_id)
    except StageFailure as failure:
        await refuse_batch(rt, batch_id, failure.error)
        return
    await submit_batch(rt, batch)


def derived_id(message) -> str:
    """An id for an upload that names none, derived from where the message sits in the log: a
    redelivered upload gets the same id, so it never runs twice."""
    where = f"{message.topic}:{message.partition}:{message.offset}"
    return hashlib.sha256(where.encode()).hexdigest()[:32]


def _readable(raw, field: str, pattern: str) -> str | None:
    try:
        value = json.loads(raw).get(field)
    except Exception:
        return None
    return value if isinstance(value, str) and re.match(pattern, value) else None


def _key(message, pattern: str) -> str | None:
    key = message.key
    if not isinstance(key, bytes):
        return None
    text = key.decode(errors="replace")
    return text if re.match(pattern, text) else None
