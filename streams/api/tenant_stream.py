"""A tenant's list of jobs as Server-Sent Events (the web app's queue view): the list at once,
then again each time one of the tenant's jobs starts or ends (the activity tracker announces
it: no polling; the list is read only then), until the client leaves or the list's partition
moves to another worker, when the stream ends and the client opens it again (routed to the
list's new owner)."""
from __future__ import annotations

import json
from typing import Callable

from aiohttp import web as aioweb

from streams.api.job_stream import KEEP_ALIVE, changed_in_time, open_event_stream
from streams.tracking import activity
from streams.tracking.tables import Tables


def newest_jobs(tables: Tables, tenant: str, limit: int, active_only: bool = False) -> dict:
    """The tenant's newest jobs, newest first: `GET /jobs` and each event of the stream."""
    listed = activity.recent_jobs(tables, tenant)
    if active_only:
        listed = [job for job in listed if job.status == "active"]
    return {"jobs": [job.model_dump(mode="json") for job in listed[:limit]]}


async def stream_jobs(request, tenant: str, tables: Tables, limit: int, active_only: bool,
                      owned: Callable[[], bool]) -> aioweb.StreamResponse:
    """owned(): whether this worker still owns the tenant's list (asked at each keep-alive: a
    stream opened as a rebalance began would otherwise watch a list no longer written here)."""
    response = await open_event_stream(request)
    watchers = tables.tenant_changes
    generation, sent = watchers.generation, None
    while watchers.generation == generation:
        changed = watchers.changed(tenant)  # taken before reading: no change slips between
        listed = json.dumps(newest_jobs(tables, tenant, limit, active_only))
        if listed != sent:
            sent = listed
            await response.write(f"event: jobs\ndata: {listed}\n\n".encode())
        while not await changed_in_time(changed):
            if not owned():
                await response.write_eof()
                return response
            await response.write(KEEP_ALIVE)
    await response.write_eof()
    return response
