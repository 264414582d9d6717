"""A tenant's jobs in flight, folded from start and end announcements: redeliveries change
nothing, and a job whose end was lost stops counting after the job timeout."""
from __future__ import annotations

from schemas.jobs import TenantActivity
from streams.tracking.activity import fold, in_flight


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
