"""How an upload on restyle.uploads becomes a job, for every pipeline: validate it, give it an
id, refuse it with the cause (the DLQ keeps the raw message; a job it names fails), or hand the
job to the tracker, which starts it once."""
from __future__ import annotations

import hashlib
import json
import re
from typing import Callable

from pydantic import BaseModel, ValidationError

from schemas import ErrorCode, JobEventKind, StageFailure
from schemas.ids import JOB_ID_PATTERN
from streams.core.runtime import Runtime, describe_validation, validate

# An upload's JSON above this is not kept on its job's state (no retry from the API for it).
MAX_KEPT_UPLOAD_BYTES = 16 * 1024


async def admit_job(rt: Runtime, message, data: dict, pipeline: str, model: type[BaseModel],
                    make_job: Callable[[BaseModel, str], BaseModel]) -> None:
    """Validate a one-job upload (data: its JSON), give it a job_id, and submit it.
    make_job(upload, job_id) checks what the schema cannot and builds the job (a StageFailure
    refuses it)."""
    try:
        upload = validate(data, model)
    except StageFailure as failure:
        await refuse_upload(rt, message, data, pipeline, failure)
        return
    job_id = upload.job_id or derived_id(message)
    try:
        try:
            job = make_job(upload, job_id)
        except ValidationError as exc:  # a job the upload's values cannot make
            raise StageFailure(ErrorCode.INVALID_PARAMS, describe_validation(exc)) from None
    except StageFailure as failure:
        await rt.fail(job_id, failure.error, upload.tenant, kind=JobEventKind.REJECTED,
                      pipeline=pipeline)
        return
    await rt.job_event(job_id, JobEventKind.SUBMITTED, tenant=upload.tenant, job=job,
                       upload=kept_upload(upload), to_tracker=True)


def kept_upload(upload: BaseModel) -> dict | None:
    """The upload as the job's state keeps it for a retry (without its id, which a retry
    replaces), or None when it is too large to keep on every state of the job."""
    kept = upload.model_dump(mode="json", exclude_none=True, exclude={"job_id"})
    return kept if len(json.dumps(kept)) <= MAX_KEPT_UPLOAD_BYTES else None


async def refuse_upload(rt: Runtime, message, upload: dict | None, pipeline: str | None,
                        failure: StageFailure) -> None:
    """An upload that cannot be read goes to the DLQ; the job it names (if its id is readable
    in upload, its JSON when it parsed) fails with the same cause, so whoever waits on it
    hears why."""
    job_id = readable_field(upload, "job_id", JOB_ID_PATTERN)
    await rt.dead_letter(message, failure.error.code, failure.error.message, job_id)
    if job_id:
        await rt.fail(job_id, failure.error, kind=JobEventKind.REJECTED, pipeline=pipeline)


def derived_id(message) -> str:
    """An id for an upload that names none, derived from the message itself: a redelivered
    upload gets the same id, so it never runs twice. Where it sits in the log is not enough:
    after a broker reset the offsets start again, and a new upload would take the id of an old
    job (and be answered with its result). Its timestamp and a digest of its bytes make the id
    new, and not guessable without the message."""
    content = hashlib.sha256(message.value or b"").hexdigest()
    where = f"{message.topic}:{message.partition}:{message.offset}:" \
            f"{getattr(message, 'timestamp', None)}:{content}"
    return hashlib.sha256(where.encode()).hexdigest()[:32]


def readable_field(upload: dict | None, field: str, pattern: str) -> str | None:
    """A well-formed id from an upload that may not validate as a whole."""
    value = upload.get(field) if upload else None
    return value if isinstance(value, str) and re.fullmatch(pattern, value) else None


def id_from_key(message, pattern: str) -> str | None:
    key = message.key
    if not isinstance(key, bytes):
        return None
    text = key.decode(errors="replace")
    return text if re.fullmatch(pattern, text) else None
