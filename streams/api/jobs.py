"""The status API's job pages (faust web): job status routed to the partition owner, progress
as Server-Sent Events, and room-makeover uploads."""
from __future__ import annotations

import asyncio
import json
import uuid

from aiohttp import web as aioweb
from faust import web

from schemas import ErrorCode, JobState
from schemas.uris import join_uri
from streams.api.routing import error_response, routed, until_known
from streams.core.runtime import Runtime
from streams.tracking.tables import Tables

SSE_POLL_S = 0.2


async def present(rt: Runtime, state: JobState) -> dict:
    """A job as users see it: result images get fresh presigned URLs."""
    body = state.model_dump(mode="json")
    result = body.get("result")
    if result:
        for image in result.get("images", []):
            image["url"] = await rt.storage.presign(image["uri"])
    return body


def register(rt: Runtime, tables: Tables) -> None:
    app, jobs, lookup = rt.app, tables.jobs, tables.board.get

    @app.page("/jobs/{job_id}")
    class JobView(web.View):
        @routed(rt, jobs)
        async def get(self, request: web.Request, job_id: str) -> web.Response:
            state = lookup(job_id)
            if state is None:
                return error_response(self, 404, "not_found", f"no job {job_id!r}")
            return self.json(await present(rt, state))

    @app.page("/jobs/{job_id}/events")
    class JobEventsView(web.View):
        @routed(rt, jobs)
        async def get(self, request: web.Request, job_id: str):
            if lookup(job_id) is None:
                return error_response(self, 404, "not_found", f"no job {job_id!r}")
            response = aioweb.StreamResponse(headers={"Content-Type": "text/event-stream",
                                                      "Cache-Control": "no-cache"})
            await response.prepare(request)
            last = None
            while True:
                state = lookup(job_id)
                snapshot = (state.status, state.progress, state.updated_at)
                if snapshot != last:
                    last = snapshot
                    payload = json.dumps(await present(rt, state))
                    await response.write(f"event: {state.status.value}\ndata: {payload}\n\n"
                                         .encode())
                if state.status.terminal:
                    break
                await asyncio.sleep(SSE_POLL_S)
            await response.write_eof()
            return response

    @app.page("/jobs")
    class SubmitView(web.View):
        async def post(self, request: web.Request) -> web.Response:
            form = await request.post()
            upload = form.get("image")
            style = form.get("style")
            if upload is None or not hasattr(upload, "file") or not style:
                return error_response(self, 400, ErrorCode.SCHEMA_VIOLATION.value,
                                      "send multipart fields 'image' (a file) and 'style'")
            job_id = str(form.get("job_id") or uuid.uuid4().hex)
            name = (upload.filename or "image").replace("/", "_")
            uri = join_uri(rt.settings.results_base, "uploads", job_id, name)
            await rt.storage.put(uri, upload.file.read(),
                                 upload.content_type or "application/octet-stream")
            event = {"job_id": job_id, "pipeline": "room_makeover", "image": uri,
                     "style": str(style)}
            if form.get("params"):
                try:
                    event["params"] = json.loads(form["params"])
                except json.JSONDecodeError:
                    return error_response(self, 400, ErrorCode.INVALID_JSON.value,
                                          "params must be a JSON object")
            if form.get("tenant"):
                event["tenant"] = str(form["tenant"])
            await rt.channels[rt.topics.uploads].send(key=job_id.encode(),
                                                      value=json.dumps(event).encode())
            await until_known(app, f"/jobs/{job_id}")
            return self.json({"job_id": job_id, "image": uri}, status=202)

