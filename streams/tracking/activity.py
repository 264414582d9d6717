"""Each tenant's jobs in flight: the job tracker announces every job it starts and every job
that ends on restyle.tenant-activity (keyed by tenant); this tracker folds them into the
activity table, which the status API reads to hold a tenant to RESTYLE_TENANT_MAX_JOBS.

A set of job ids, not a counter: a redelivered announcement changes nothing. A job whose end
was never heard of (lost outside restyle) stops counting once it is older than the job
timeout, so a tenant is never locked out by a leak."""
from __future__ import annotations

import json

from schemas.jobs import TenantActivity
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


def register(rt: Runtime, tables: Tables) -> None:
    async def track(event: TenantActivity) -> None:
        before = lookup(tables, event.tenant)
        after = fold(before, event)
        if after != before:
            tables.activity[event.tenant.encode()] = json.dumps(after).encode()

    rt.stage_agent("activity-tracker", track, TenantActivity,
                   topic=rt.topics.tenant_activity, fail_jobs=False,
                   follows_cancellations=False)
