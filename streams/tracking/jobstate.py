"""The job state machine: how each job event changes a job's state, as a pure function.

The tracker agent folds `restyle.job-events` through `apply_event` into the jobs table. Replaying
the same events converges on the same state: status only moves forward, a terminal state is final,
and a known job_id is never started (or finished) twice.
"""
from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from schemas import (
    ErrorCode,
    JobError,
    JobEvent,
    JobEventKind,
    JobState,
    JobStatus,
    ResultEvent,
)


@dataclass
class Transition:
    state: JobState | None  # the new state to store (None: nothing changes)
    start: BaseModel | None = None  # the job, to forward to its pipeline's first stage
    result: ResultEvent | None = None  # publish on restyle.results


def apply_event(state: JobState | None, event: JobEvent) -> Transition:
    kind = event.kind
    if kind is JobEventKind.SUBMITTED:
        if state is None:
            new = JobState(job_id=event.job_id, tenant=event.tenant, status=JobStatus.QUEUED,
                           pipeline=event.job.pipeline if event.job else None,
                           batch_id=event.batch_id, created_at=event.at, updated_at=event.at,
                           upload=event.upload)
            return Transition(new, start=event.job)
        if state.status is JobStatus.QUEUED:
            # Seen before but never started: a replay after a crash between storing the state
            # and forwarding the job. Forward again (stages are idempotent).
            return Transition(None, start=event.job)
        return Transition(None)  # a repeated job_id never runs twice
    if kind is JobEventKind.REJECTED:
        if state is not None:
            return Transition(None)  # a bad duplicate must not fail the real job
        return _finish(JobState(job_id=event.job_id, tenant=event.tenant,
                                status=JobStatus.QUEUED, batch_id=event.batch_id,
                                pipeline=event.pipeline,
                                created_at=event.at, updated_at=event.at), event,
                       JobStatus.FAILED)
    if kind is JobEventKind.CANCELLED:
        return _cancel(state, event)
    if state is None or state.status.terminal:
        return Transition(None)
    if kind is JobEventKind.STATUS and event.status is not None:
        if event.status is state.status and event.at > state.updated_at and \
                event.status in (JobStatus.GENERATING, JobStatus.TRAINING):
            # A worker starts it again (it took over a dead one's request): it moved.
            return Transition(state.model_copy(update={"updated_at": event.at}))
        if event.status.rank <= state.status.rank:
            return Transition(None)
        queue = event.queue if event.status is JobStatus.QUEUED_FOR_GPU else None
        return Transition(state.model_copy(update={
            "status": event.status, "progress": None, "queue": queue, "updated_at": event.at,
            "photo_check": event.photo_check or state.photo_check}))
    if kind is JobEventKind.REQUEUED:
        # Only a job being rendered (or trained) waits again, and only one that has not moved
        # since: a worker that took over a dead one's requests dates its word from when it took
        # them, and a render it started since then stands (streams/core/inherited.py).
        if state.status not in (JobStatus.GENERATING, JobStatus.TRAINING) or \
                event.at < state.updated_at:
            return Transition(None)
        return Transition(state.model_copy(update={
            "status": JobStatus.QUEUED_FOR_GPU, "progress": None, "queue": event.queue,
            "updated_at": event.at}))
    if kind is JobEventKind.PROGRESS:
        status = state.status if state.status.rank >= JobStatus.GENERATING.rank else \
            JobStatus.GENERATING
        return Transition(state.model_copy(update={"status": status, "progress": event.progress,
                                                   "queue": None, "updated_at": event.at}))
    if kind is JobEventKind.COMPLETED:
        return _finish(state, event, JobStatus.DONE)
    if kind is JobEventKind.FAILED:
        return _finish(state, event, JobStatus.FAILED)
    return Transition(None)


def _cancel(state: JobState | None, event: JobEvent) -> Transition:
    """A job ends cancelled unless it already ended. A cancel that arrives before the job's
    submission (they travel on different topics) leaves a cancelled state behind, so the job
    never starts; one naming another tenant than the job's changes nothing."""
    foreign = None not in (event.tenant, state and state.tenant) and event.tenant != state.tenant
    if state is not None and (state.status.terminal or foreign):
        return Transition(None)
    event = event.model_copy(update={"error": JobError(
        code=ErrorCode.CANCELLED, message=f"cancelled by {event.by or 'an upstream system'}")})
    if state is None:
        state = JobState(job_id=event.job_id, tenant=event.tenant, status=JobStatus.QUEUED,
                         pipeline=event.pipeline, created_at=event.at, updated_at=event.at)
    return _finish(state, event, JobStatus.CANCELLED)


def _finish(state: JobState, event: JobEvent, status: JobStatus) -> Transition:
    new = state.model_copy(update={"status": status, "error": event.error,
                                   "result": event.result, "updated_at": event.at})
    result = ResultEvent(job_id=new.job_id, tenant=new.tenant, pipeline=new.pipeline,
                         batch_id=new.batch_id, status=status.value, error=new.error, result=new.result,
                         finished_at=event.at)
    return Transition(new, result=result)


def stalled(state: JobState, now: float, timeout_s: float) -> bool:
    """A job that has not moved for timeout_s: a message lost outside restyle, a worker pool
    scaled to zero. The sweeper fails it (with the stage it was stuck in) rather than leave
    it running forever."""
    return not state.status.terminal and now - state.updated_at > timeout_s
