"""A tenant's jobs in flight, folded from start and end announcements: redeliveries change
nothing, and a job whose end was lost stops counting after the job timeout."""
from __future__ import annotations

from schemas import ErrorCode, JobError
from schemas.jobs import TenantActivity
from streams.tracking.activity import fold, in_flight, listed


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


def test_the_job_list_is_newest_first_shows_how_each_ended_and_keeps_the_newest():
    recent = []
    for announcement in (
            TenantActivity(tenant="acme", job_id="j1", active=True, at=1.0,
                           pipeline="room_makeover"),
            TenantActivity(tenant="acme", job_id="j2", active=True, at=2.0,
                           pipeline="background_replace", batch_id="b1"),
            ended("j1", "done", 3.0),
            # A refused upload ends without having started.
            ended("j3", "failed", 4.0),
            # A start replayed after the end does not bring the job back to life.
            TenantActivity(tenant="acme", job_id="j1", active=True, at=1.0)):
        recent = listed(recent, announcement, keep=10)
    assert [(job.job_id, job.status) for job in recent] == [
        ("j3", "failed"), ("j2", "active"), ("j1", "done")]
    assert recent[1].batch_id == "b1" and recent[2].pipeline == "room_makeover"
    assert (recent[2].started_at, recent[2].ended_at) == (1.0, 3.0)
    assert recent[0].error.message == "too slow" and recent[2].error is None
    assert [job.job_id for job in listed(recent, ended("j4", "cancelled", 9.0), keep=2)] == \
        ["j4", "j3"]
