"""The status API's job pages (faust web): job status routed to the partition owner, progress
as Server-Sent Events, and room-makeover uploads."""
from __future__ import annotations

import json
from functools import partial
import time
import uuid

from faust import web

from schemas import ErrorCode, JobEvent, JobEventKind, JobState, JobStatus, StageFailure
from schemas.ids import JOB_ID_PATTERN
from schemas.uris import join_uri
from streams.api.job_stream import FrameCache, stream_job
from streams.api.limits import TenantLimiter, TooManyStreams
from streams.api.tenant_stream import newest_jobs, stream_jobs
from streams.api.tenants import TenantUsage
from streams.api.routing import (
    cancel_refused,
    error_response,
    json_body,
    owned_here,
    routed,
    until_known,
)
from streams.api.tenancy import (
    ForeignTenant,
    InvalidId,
    acting_tenant,
    caller,
    chosen_id,
    requested_by,
    sees,
)
from streams.api.queue import QueuePositions
from streams.core.runtime import Runtime, json_object
from streams.tracking.tables import Tables

# The one-job pipelines POST /jobs takes as a JSON upload.
SUBMITTED_AS_JSON = ("room_makeover", "condition")


async def present(rt: Runtime, state: JobState, positions: QueuePositions | None = None
                  ) -> dict:
    """A job as users see it: result images get fresh presigned URLs; a job waiting for a
    GPU worker, how many requests are ahead of it (`queue_position`, when known)."""
    body = state.model_dump(mode="json", exclude={"queue"})
    if state.queue is not None and state.status is JobStatus.QUEUED_FOR_GPU and positions:
        body["queue_position"] = await positions.ahead(state.queue)
    body.pop("upload", None)  # what a retry resubmits; not part of what a job shows
    body["retryable"] = state.retryable
    result = body.get("result")
    if result:
        for image in result.get("images", []):
            image["url"] = await rt.storage.presign(image["uri"])
    return body


def safe_file_name(given: str | None) -> str:
    """The caller's file name, kept (non-ASCII too) but never a path: no separators, no
    percent-escapes (file:// storage would decode them into separators), no leading dots, so
    it cannot climb out of the job's prefix."""
    name = given or ""
    for character in "/\\%":
        name = name.replace(character, "_")
    return name.lstrip(".") or "image"


def register(rt: Runtime, tables: Tables, limiter: TenantLimiter, usage: TenantUsage) -> None:
    app, jobs, board = rt.app, tables.jobs, tables.board
    positions = QueuePositions(rt.settings)
    frames = FrameCache(lambda state: present(rt, state, positions), positions)

    def lookup(request, job_id: str) -> JobState | None:
        """The caller's job, or None (unknown, or another tenant's: the same answer)."""
        state = board.get(job_id)
        return state if state is not None and sees(request, rt.settings, state.tenant) else None

    @app.page("/jobs/{job_id}")
    class JobView(web.View):
        @routed(rt, jobs)
        async def get(self, request: web.Request, job_id: str) -> web.Response:
            state = lookup(request, job_id)
            if state is None:
                return error_response(self, 404, "not_found", f"no job {job_id!r}")
            return self.json(await present(rt, state, positions))

        @routed(rt, jobs)
        async def delete(self, request: web.Request, job_id: str) -> web.Response:
            """Cancel the job: 202 with the job as it is now; it ends `cancelled` (a queued
            job never starts, a render or a training stops at its next step). 409 if it
            already ended."""
            state = lookup(request, job_id)
            refused = cancel_refused(self, "job", job_id, state is not None, state and (
                state.status.value if state.status.terminal else None))
            if refused:
                return refused
            await rt.send(rt.topics.job_events, job_id, JobEvent(
                job_id=job_id, kind=JobEventKind.CANCELLED, at=time.time(),
                by=requested_by(request)), acknowledged=True)
            return self.json(await present(rt, state, positions), status=202)

    @app.page("/jobs/{job_id}/events")
    class JobEventsView(web.View):
        @routed(rt, jobs)
        async def get(self, request: web.Request, job_id: str):
            if lookup(request, job_id) is None:
                return error_response(self, 404, "not_found", f"no job {job_id!r}")
            try:
                with limiter.stream(caller(request).tenant):
                    return await stream_job(request, job_id, board, frames)
            except TooManyStreams as exc:
                return error_response(self, 429, "too_many_streams", str(exc),
                                      {"Retry-After": "5"})

    async def submit(view, request, event: dict, store=None, **answered) -> web.Response:
        """Publish a one-job upload for the caller's tenant on restyle.uploads, as an upstream
        system would; the intake validates it (a bad one ends `failed` with its cause).
        store: what writes the job's photo, awaited once the job is admitted (a refused one
        leaves nothing in storage). answered: more fields for the 202's body."""
        try:
            tenant = acting_tenant(request, event.get("tenant"))
            job_id = chosen_id(request, rt.settings, str(event.get("job_id") or
                                                         uuid.uuid4().hex),
                               "job_id", JOB_ID_PATTERN)
        except ForeignTenant as exc:
            return error_response(view, 403, "forbidden", str(exc))
        except InvalidId as exc:
            return error_response(view, 400, ErrorCode.SCHEMA_VIOLATION.value, str(exc))
        busy = await usage.refusal(request)
        if busy:
            return error_response(view, 429, "too_many_jobs", busy, {"Retry-After": "5"})
        event = {**event, "job_id": job_id, "tenant": tenant}
        try:  # what the caller's tenant may not read is refused before anything runs
            if isinstance(event.get("image"), str):
                rt.check_input(event["image"], tenant)
        except StageFailure as failure:
            return error_response(view, 400, failure.error.code.value, failure.error.message)
        if store is not None:
            await store()
        await rt.publish_upload(job_id, json.dumps(event).encode())
        await until_known(app, request, f"/jobs/{job_id}")
        return view.json({"job_id": job_id, **({"image": event["image"]} if "image" in event
                                                 else {}), **answered}, status=202)

    @app.page("/jobs/{job_id}/retry")
    class RetryView(web.View):
        @routed(rt, jobs)
        async def post(self, request: web.Request, job_id: str) -> web.Response:
            """Submit a failed or cancelled job again, as it was uploaded, under a new id
            (answered with `retry_of`). 409 for a job that did not fail, or whose upload was
            not kept (a batch's image: resubmit the batch)."""
            state = lookup(request, job_id)
            if state is None:
                return error_response(self, 404, "not_found", f"no job {job_id!r}")
            if not state.retryable:
                why = "it is a batch's image or its upload was not kept" \
                    if state.status.terminal and state.status is not JobStatus.DONE \
                    else f"it is {state.status.value}"
                return error_response(self, 409, "not_retryable",
                                      f"job {job_id!r} cannot be retried: {why}")
            return await submit(self, request, {**state.upload, "job_id": None},
                                retry_of=job_id)

    @app.page("/styles")
    class StylesView(web.View):
        async def get(self, request: web.Request) -> web.Response:
            """The decor styles a makeover may name, with what each adds to the prompt."""
            styles = {**rt.settings.styles, **rt.settings.extra_styles}
            return self.json({"styles": [{"name": name, "description": text}
                                         for name, text in styles.items()]})

    def list_limit(request) -> int | None:
        """?limit= of a list of jobs (default 50, at most RESTYLE_TENANT_RECENT_JOBS)."""
        try:
            return max(1, min(int(request.query.get("limit", "50")),
                              rt.settings.tenant_recent_jobs))
        except ValueError:
            return None

    @app.page("/tenant/events")
    class TenantEventsView(web.View):
        @routed(rt, tables.activity, key_of=lambda request: caller(request).tenant)
        async def get(self, request: web.Request):
            """The caller's newest jobs (as `GET /jobs` lists them, ?limit= and ?active=
            too) as Server-Sent Events: the list, then again each time one starts or ends."""
            limit, tenant = list_limit(request), caller(request).tenant
            if limit is None:
                return error_response(self, 400, ErrorCode.SCHEMA_VIOLATION.value,
                                      "limit must be a whole number")
            try:
                with limiter.stream(tenant):
                    return await stream_jobs(
                        request, tenant, tables, limit, request.query.get("active") == "true",
                        owned=lambda: owned_here(rt, tables.activity, tenant))
            except TooManyStreams as exc:
                return error_response(self, 429, "too_many_streams", str(exc),
                                      {"Retry-After": "5"})

    @app.page("/jobs")
    class SubmitView(web.View):
        @routed(rt, tables.activity, key_of=lambda request: caller(request).tenant)
        async def get(self, request: web.Request) -> web.Response:
            """The caller's newest jobs, newest first (?limit=, default 50; ?active=true for
            those still running)."""
            limit = list_limit(request)
            if limit is None:
                return error_response(self, 400, ErrorCode.SCHEMA_VIOLATION.value,
                                      "limit must be a whole number")
            return self.json(newest_jobs(tables, caller(request).tenant, limit,
                                         request.query.get("active") == "true"))

        async def post(self, request: web.Request) -> web.Response:
            """Multipart: a room makeover (`image` a file, `style`, optional `params` JSON and
            `job_id`). JSON: any one-job upload as restyle.uploads takes it (a conditioned
            generation: {"pipeline": "condition", "image": URI, "params": {...}})."""
            if request.content_type == "application/json":
                body, problem = await json_body(self, request)
                if problem:
                    return problem
                if body.get("pipeline") not in SUBMITTED_AS_JSON:
                    return error_response(self, 400, ErrorCode.UNSUPPORTED_PIPELINE.value,
                                          f"name \"pipeline\": one of "
                                          f"{', '.join(SUBMITTED_AS_JSON)} (batches: POST "
                                          f"/batches; avatars: POST /avatars)")
                return await submit(self, request, body)
            form = await request.post()
            upload = form.get("image")
            style = form.get("style")
            if upload is None or not hasattr(upload, "file") or not style:
                return error_response(self, 400, ErrorCode.SCHEMA_VIOLATION.value,
                                      "send multipart fields 'image' (a file) and 'style'")
            event = {"pipeline": "room_makeover", "style": str(style)}
            for field in ("tenant", "job_id"):
                if form.get(field):
                    event[field] = str(form[field])
            if form.get("params"):
                given = form["params"]
                try:
                    if not isinstance(given, str):
                        raise StageFailure(ErrorCode.INVALID_JSON, "a file, not a form field")
                    event["params"] = json_object(given.encode())
                except StageFailure as failure:
                    return error_response(self, 400, ErrorCode.INVALID_JSON.value,
                                          f"params must be a JSON object: "
                                          f"{failure.error.message}")
            try:
                tenant = acting_tenant(request, event.get("tenant"))
                job_id = chosen_id(request, rt.settings, event.get("job_id") or
                                   uuid.uuid4().hex, "job_id", JOB_ID_PATTERN)
            except ForeignTenant as exc:
                return error_response(self, 403, "forbidden", str(exc))
            except InvalidId as exc:
                return error_response(self, 400, ErrorCode.SCHEMA_VIOLATION.value, str(exc))
            image = event["image"] = join_uri(rt.base_for(tenant), "uploads", job_id,
                                              safe_file_name(upload.filename))
            return await submit(self, request, {**event, "job_id": job_id}, store=partial(
                rt.storage.put, image, upload.file.read(),
                upload.content_type or "application/octet-stream"))

