"""A tenant's usage and its cap on jobs in flight: `GET /tenant` shows the caller's jobs in
flight and limits (served by the worker owning the tenant's partition of the activity table),
and the submitting pages ask the same before accepting more work."""
from __future__ import annotations

import time

import aiohttp
from faust import web

from streams.api.routing import is_local, owner_url, routed
from streams.api.tenancy import caller
from streams.core.runtime import Runtime
from streams.tracking import activity
from streams.tracking.tables import Tables


class TenantUsage:
    def __init__(self, rt: Runtime, tables: Tables):
        self.rt, self.tables = rt, tables

    def local(self, tenant: str) -> dict:
        """The tenant's usage from this worker's table partitions (it owns the tenant's)."""
        settings = self.rt.settings
        active = activity.lookup(self.tables, tenant)
        return {"tenant": tenant,
                "jobs_in_flight": activity.in_flight(active, time.time(), settings.job_timeout_s),
                "limits": settings.limits_for(tenant).model_dump()}

    async def jobs_in_flight(self, request) -> int | None:
        """The caller's tenant's jobs in flight, asked of the worker that owns the count; None
        while its partition is being reassigned (the caller is not held back then)."""
        tenant = caller(request).tenant
        url = owner_url(self.rt.app, self.tables.activity, tenant, self.rt.settings.partitions)
        if url is None:
            return None
        if is_local(self.rt.app, url):
            return self.local(tenant)["jobs_in_flight"]
        headers = {"Authorization": request.headers.get("Authorization", ""),
                   "X-Restyle-Routed": "1"}
        timeout = aiohttp.ClientTimeout(total=5)
        try:
            async with aiohttp.ClientSession(timeout=timeout, headers=headers) as session:
                async with session.get(url.with_path("/tenant")) as response:
                    if response.status != 200:
                        return None
                    return (await response.json())["jobs_in_flight"]
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def refusal(self, request) -> str | None:
        """Why the caller may not submit now (its tenant is at its cap), or None."""
        tenant = caller(request).tenant
        cap = self.rt.settings.limits_for(tenant).max_jobs
        running = await self.jobs_in_flight(request)
        if running is not None and running >= cap:
            return (f"tenant {tenant!r} has {running} jobs in flight, its limit "
                    f"(RESTYLE_TENANT_MAX_JOBS {cap}); submit again when some have finished")
        return None


def register(rt: Runtime, tables: Tables) -> TenantUsage:
    usage = TenantUsage(rt, tables)

    @rt.app.page("/tenant")
    class UsageView(web.View):
        @routed(rt, tables.activity, key_of=lambda request: caller(request).tenant)
        async def get(self, request: web.Request) -> web.Response:
            return self.json(usage.local(caller(request).tenant))

    return usage
