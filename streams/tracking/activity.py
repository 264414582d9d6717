"""Each tenant's jobs in flight and its newest jobs: the job tracker announces every job it
starts and every job that ends on restyle.tenant-activity (keyed by tenant); this tracker folds
them into the activity table, which the status API reads to hold a tenant to
RESTYLE_TENANT_MAX_JOBS and to list the tenant's jobs (`GET /jobs`, the web app's queue view),
newest first and RESTYLE_TENANT_RECENT_JOBS long: one record per job ("tenant/job_id") and an
index of the tenant's ids ("tenant/#index"), so that a change writes a few hundred bytes,
never the whole list. (Tenant names hold no "/" and job ids no "#": the keys cannot meet.)

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


INDEX = "#index"


def line_after(known: RecentJob | None, event: TenantActivity) -> RecentJob:
    """A job's line in its tenant's list after event. A job's start and end may arrive in
    either order across a replay: an end is never undone by a start."""
    if event.active:
        return known or RecentJob(job_id=event.job_id, pipeline=event.pipeline,
                                  batch_id=event.batch_id, status="active", started_at=event.at)
    status = event.status.value if event.status else "ended"
    return (known or RecentJob(job_id=event.job_id, pipeline=event.pipeline,
                               batch_id=event.batch_id, status=status,
                               started_at=event.at)).model_copy(
        update={"status": status, "ended_at": event.at, "error": event.error,
                "retryable": event.retryable})


def index_after(ids: list[str], job_id: str, keep: int) -> tuple[list[str], list[str]]:
    """(the tenant's job ids, newest first, with a newly heard-of job; the ids it pushed out
    beyond keep)."""
    ids = [job_id, *ids]
    return ids[:keep], ids[keep:]


def _line_key(tenant: str, job_id: str) -> bytes:
    return f"{tenant}/{job_id}".encode()


def _index(tables: Tables, tenant: str) -> list[str]:
    stored = tables.activity.get(_line_key(tenant, INDEX))
    return json.loads(stored) if stored else []


def _line(tables: Tables, tenant: str, job_id: str) -> RecentJob | None:
    stored = tables.activity.get(_line_key(tenant, job_id))
    return RecentJob.model_validate_json(stored) if stored else None


def recent_jobs(tables: Tables, tenant: str) -> list[RecentJob]:
    """The tenant's newest jobs, newest first (on the worker that owns the tenant)."""
    lines = (_line(tables, tenant, job_id) for job_id in _index(tables, tenant))
    return [line for line in lines if line is not None]


def register(rt: Runtime, tables: Tables) -> None:
    async def track(event: TenantActivity) -> None:
        before = lookup(tables, event.tenant)
        after = fold(before, event)
        if after != before:
            tables.activity[event.tenant.encode()] = json.dumps(after).encode()
        # One small record per job and change, and the tenant's index of ids only when a job
        # is first heard of: the list is never written whole.
        known = _line(tables, event.tenant, event.job_id)
        line = line_after(known, event)
        if line != known:
            tables.activity[_line_key(event.tenant, event.job_id)] = \
                line.model_dump_json().encode()
        if known is None:
            ids, dropped = index_after(_index(tables, event.tenant), event.job_id,
                                       rt.settings.tenant_recent_jobs)
            tables.activity[_line_key(event.tenant, INDEX)] = json.dumps(ids).encode()
            for job_id in dropped:
                tables.activity.pop(_line_key(event.tenant, job_id), None)
        if line != known:  # once the list is whole again
            tables.tenant_changes.announce(event.tenant)

    @rt.app.on_partitions_revoked.connect
    async def end_streams(*_args, **_kwargs) -> None:
        """A tenant's list may now belong to another worker: its streams here end (a client
        opens its stream again, and is routed to the list's owner)."""
        tables.tenant_changes.announce_all()

    rt.stage_agent("activity-tracker", track, TenantActivity,
                   topic=rt.topics.tenant_activity, fail_jobs=False,
                   follows_cancellations=False)
