"""The event a job's SSE streams get is built once per state of the job, however many streams
watch it; a new state (progress, status) builds a new one; an ended job's event, whose result
links are presigned, is never kept."""
from __future__ import annotations

import asyncio
import json

from schemas import JobEventKind, JobStatus, Progress
from streams.api.job_stream import FrameCache
from streams.tracking.jobboard import JobBoard
from tests.streams.tracking.test_jobs import Clock, _job, event, feed


def test_one_frame_per_state_of_a_job_for_all_its_streams():
    board = JobBoard({}, progress_store_interval_s=5.0, clock=Clock())
    built = []

    async def present(state):
        built.append(state.status)
        return {"job_id": state.job_id, "status": state.status.value,
                "progress": state.progress and state.progress.model_dump()}

    frames = FrameCache(present, positions=None)

    async def fifty_streams_read():
        return [await frames.frame(board.get("j1")) for _ in range(50)]

    feed(board, event(JobEventKind.SUBMITTED, job=_job(), at=10.0),
         event(JobEventKind.STATUS, status=JobStatus.GENERATING, at=10.1))
    first = asyncio.run(fifty_streams_read())
    assert len(built) == 1 and len({frame for _, frame in first}) == 1
    assert first[0][1].startswith(b"event: generating\ndata: ")

    feed(board, event(JobEventKind.PROGRESS, progress=Progress(step=3, total=30), at=10.2))
    [(_, frame), *_] = asyncio.run(fifty_streams_read())
    assert len(built) == 2
    assert json.loads(frame.split(b"data: ", 1)[1])["progress"]["step"] == 3

    feed(board, event(JobEventKind.STATUS, status=JobStatus.REANALYZING, at=10.3),
         event(JobEventKind.FAILED, error={"code": "internal_error", "message": "x"}, at=10.4))
    asyncio.run(fifty_streams_read())
    assert built[2:] == [JobStatus.FAILED] * 50  # an ended job: built for each stream
    assert "j1" not in frames._frames
