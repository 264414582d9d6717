"""A job's Server-Sent Events: one per change (its status, progress or queue position) until
it ends.

Hundreds of streams may watch the same few jobs (a page per user, a dashboard). So a stream
sleeps until the tracker changes its job in this process (JobBoard.changed: no polling), and
the event for a given state of a job is built once and sent to every stream that watches it
(the frame cache), rather than once per stream. A comment every SSE_KEEPALIVE_S (spread by
±20% so that streams opened together do not all wake together) keeps proxies from closing an
idle stream, notices a client that left, and re-reads a waiting job's queue position.
"""
from __future__ import annotations

import asyncio
import json
import random
from collections import OrderedDict
from typing import Awaitable, Callable

from aiohttp import web as aioweb

from schemas import JobState, JobStatus
from streams.api.queue import QueuePositions
from streams.tracking.jobboard import JobBoard

SSE_KEEPALIVE_S = 5.0
KEPT_FRAMES = 4096
KEEP_ALIVE = b": keep-alive\n\n"


class FrameCache:
    """The newest event of each watched job, encoded once for all of its streams."""

    def __init__(self, present: Callable[[JobState], Awaitable[dict]],
                 positions: QueuePositions):
        self.present = present
        self.positions = positions
        self._frames: OrderedDict[str, tuple[tuple, bytes]] = OrderedDict()

    async def frame(self, state: JobState) -> tuple[tuple, bytes]:
        """(what the event shows, the event's bytes) for state."""
        position = None
        if state.queue is not None and state.status is JobStatus.QUEUED_FOR_GPU:
            position = await self.positions.ahead(state.queue)
        shows = (state.updated_at, state.status, state.progress, position)
        kept = self._frames.get(state.job_id)
        if kept is not None and kept[0] == shows:
            self._frames.move_to_end(state.job_id)
            return kept
        payload = await self.present(state)
        frame = (shows, f"event: {state.status.value}\ndata: {json.dumps(payload)}\n\n".encode())
        if state.status.terminal:
            # Sent once per stream, and its result links are presigned: never kept.
            self._frames.pop(state.job_id, None)
            return frame
        self._frames[state.job_id] = frame
        self._frames.move_to_end(state.job_id)
        while len(self._frames) > KEPT_FRAMES:
            self._frames.popitem(last=False)
        return frame


async def open_event_stream(request) -> aioweb.StreamResponse:
    """An answer of Server-Sent Events, its headers sent."""
    response = aioweb.StreamResponse(headers={"Content-Type": "text/event-stream",
                                              "Cache-Control": "no-cache"})
    await response.prepare(request)
    return response


async def changed_in_time(changed: asyncio.Event) -> bool:
    """Wait for changed for one keep-alive interval at most (spread by ±20%); False when it is
    time for a keep-alive instead."""
    try:
        await asyncio.wait_for(changed.wait(), SSE_KEEPALIVE_S * random.uniform(0.8, 1.2))
        return True
    except TimeoutError:
        return False


async def stream_job(request, job_id: str, board: JobBoard, frames: FrameCache
                     ) -> aioweb.StreamResponse:
    response = await open_event_stream(request)
    sent = None
    while True:
        changed = board.changed(job_id)  # taken before reading: no change slips between
        state = board.get(job_id)
        shows, frame = await frames.frame(state)
        if shows != sent:
            sent = shows
            await response.write(frame)
        if state.status.terminal:
            break
        if not await changed_in_time(changed):
            await response.write(KEEP_ALIVE)
    await response.write_eof()
    return response
