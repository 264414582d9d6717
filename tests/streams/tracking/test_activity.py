"""A tenant's jobs in flight, folded from start and end announcements: redeliveries change
nothing, and a job whose end was lost stops counting after the job timeout."""
from __future__ import annotations

from schemas import ErrorCode, JobError
from schemas.jobs import TenantActivity
from streams.tracking.activity import fold, in_flight, index_after, line_after


def event(job_id: str, active: bool, at: float = 10.0) -> TenantActivity:
    return TenantActivity(tenant="acme", job_id=job_id, active=active, at=at)


def test_starts_and_ends_are_counted_once_whatever_is_redelivered():
    active = {}
    for announcement in (event("j1", True), event("j2", True), event("j1", True, at=50.0),
                         event("j1", False), event("j1", False), event("j3", False)):
        active = fold(active, announcement)
    assert active == {"j2": 10.0}


def test_a_job_older_than_the_horizon_stops_counting():
    active = {"old": 0.0, "new": 990.0}
    assert in_flight(active, now=1000.0, horizon_s=100.0) == 1
    assert in_flight(active, now=1000.0, horizon_s=0) == 2


def ended(job_id: str, status: str, at: float) -> TenantActivity:
    error = None if status == "done" else JobError(code=ErrorCode.TIMEOUT, message="too slow")
    return TenantActivity(tenant="acme", job_id=job_id, active=False, at=at,
                          pipeline="condition", status=status, error=error)


def test_a_jobs_line_shows_how_it_ended_whatever_order_its_announcements_arrive_in():
    started = TenantActivity(tenant="acme", job_id="j1", active=True, at=1.0,
                             pipeline="room_makeover", batch_id="b1")
    line = line_after(None, started)
    assert (line.status, line.pipeline, line.batch_id, line.started_at) == \
        ("active", "room_makeover", "b1", 1.0)
    done = line_after(line, ended("j1", "done", 3.0))
    assert (done.status, done.started_at, done.ended_at, done.error) == ("done", 1.0, 3.0, None)
    # A start replayed after the end does not bring the job back to life.
    assert line_after(done, started) == done
    # A refused upload ends without having started; its cause is on its line.
    refused = line_after(None, ended("j3", "failed", 4.0))
    assert refused.status == "failed" and refused.error.message == "too slow"
    # Whether it can be retried is on its line (the web app offers Retry only then).
    assert not refused.retryable
    retryable = ended("j4", "failed", 5.0).model_copy(update={"retryable": True})
    assert line_after(None, retryable).retryable


def test_the_index_keeps_the_newest_ids_and_says_which_fell_out():
    ids, dropped = index_after([], "j1", keep=2)
    ids, dropped = index_after(ids, "j2", keep=2)
    assert (ids, dropped) == (["j2", "j1"], [])
    assert index_after(ids, "j3", keep=2) == (["j3", "j2"], ["j1"])
