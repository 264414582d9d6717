"""Each tenant's jobs in flight and its newest jobs: the job tracker announces every job it
starts and every job that ends on restyle.tenant-activity (keyed by tenant); this tracker folds
them into the activity table, which the status API reads to hold a tenant to
RESTYLE_TENANT_MAX_JOBS, and into the recent-jobs table, the tenant's job list (`GET /jobs`,
the web app's queue view), newest first and RESTYLE_TENANT_RECENT_JOBS long.

A set of job ids, not a counter: a redelivered announcement changes nothing. A job whose end
was never heard of (lost outside restyle) stops counting once it is older than the job
timeout, so a tenant is never locked out by a leak."""
from __future__ import annotations

import json

from schemas.jobs import RecentJob, TenantActivity
from streams.core.runtime import Runtime
from streams.tracking.tables import Tables


def fold(active: dict[str, float], event: TenantActivity) -> dict[str, float]:
    """The tenant's jobs in flight (job_id -> started at) after event."""
    changed = dict(active)
    if event.active:
        changed.setdefault(event.job_id, event.at)
    else:
        changed.pop(event.job_id, None)
    return changed


def in_flight(active: dict[str, float], now: float, horizon_s: float) -> int:
    """How many of them count: those younger than horizon_s (0: all)."""
    if horizon_s <= 0:
        return len(active)
    return sum(1 for started in active.values() if now - started <= horizon_s)


def lookup(tables: Tables, tenant: str) -> dict[str, float]:
    stored = tables.activity.get(tenant.encode())
    return json.loads(stored) if stored else {}


def listed(recent: list[RecentJob], event: TenantActivity, keep: int) -> list[RecentJob]:
    """The tenant's newest jobs (newest first, at most keep) after event. A job's start and
    end may arrive in either order across a replay: an end is never undone by a start."""
    jobs = {job.job_id: job for job in recent}
    known = jobs.get(event.job_id)
    if event.active:
        if known is not None:
            return recent
        line = RecentJob(job_id=event.job_id, pipeline=event.pipeline, batch_id=event.batch_id,
                         status="active", started_at=event.at)
    else:
        status = event.status.value if event.status else "ended"
        line = (known or RecentJob(job_id=event.job_id, pipeline=event.pipeline,
                                   batch_id=event.batch_id, status=status,
                                   started_at=event.at)).model_copy(
            update={"status": status, "ended_at": event.at, "error": event.error})
    jobs[event.job_id] = line
    return sorted(jobs.values(), key=lambda job: job.started_at, reverse=True)[:keep]


def recent_jobs(tables: Tables, tenant: str) -> list[RecentJob]:
    stored = tables.recent_jobs.get(tenant.encode())
    return [RecentJob.model_validate(line) for line in json.loads(stored)] if stored else []


def register(rt: Runtime, tables: Tables) -> None:
    async def track(event: TenantActivity) -> None:
        before = lookup(tables, event.tenant)
        after = fold(before, event)
        if after != before:
            tables.activity[event.tenant.encode()] = json.dumps(after).encode()
        recent = recent_jobs(tables, event.tenant)
        updated = listed(recent, event, rt.settings.tenant_recent_jobs)
        if updated != recent:
            tables.recent_jobs[event.tenant.encode()] = json.dumps(
                [job.model_dump(mode="json") for job in updated]).encode()

    rt.stage_agent("activity-tracker", track, TenantActivity,
                   topic=rt.topics.tenant_activity, fail_jobs=False,
                   follows_cancellations=False)
