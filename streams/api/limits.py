"""Per-tenant limits on the status API: the rate of submitting requests (moving windows from
the `limits` library, answered with 429, Retry-After and the IETF RateLimit headers) and the
progress streams a tenant holds open. Counted per worker: N workers behind a load balancer
admit up to N times a tenant's rate."""
from __future__ import annotations

import math
import time
from collections import Counter
from contextlib import contextmanager
from functools import lru_cache

from aiohttp import web as aioweb
from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from streams.api.auth.middleware import PRINCIPAL, READ_METHODS, refusal
from streams.core.settings.limits import LimitSettings


class TooManyStreams(Exception):
    pass


@lru_cache(maxsize=256)
def rates(notation: str) -> tuple[RateLimitItem, ...]:
    return tuple(parse_many(notation))


class TenantLimiter:
    def __init__(self, settings: LimitSettings):
        self.settings = settings
        self._windows = MovingWindowRateLimiter(MemoryStorage())
        self._streams: Counter[str] = Counter()

    def submit(self, tenant: str) -> tuple[bool, dict[str, str]]:
        """Count one submitting request; (allowed, the headers that tell the caller where it
        stands)."""
        items = rates(self.settings.limits_for(tenant).submit_rate)
        blocked = [item for item in items if not self._windows.test(item, tenant)]
        if not blocked:
            for item in items:
                self._windows.hit(item, tenant)
        # The tightest window speaks for all of them.
        item = blocked[0] if blocked else min(
            items, key=lambda i: self._windows.get_window_stats(i, tenant).remaining)
        stats = self._windows.get_window_stats(item, tenant)
        reset = max(1, math.ceil(stats.reset_time - time.time()))
        headers = {"RateLimit-Limit": str(item.amount), "RateLimit-Remaining":
                   str(stats.remaining), "RateLimit-Reset": str(reset)}
        if blocked:
            headers["Retry-After"] = str(reset)
        return not blocked, headers

    @contextmanager
    def stream(self, tenant: str):
        """Hold one of the tenant's progress streams for the with block."""
        allowed = self.settings.limits_for(tenant).max_streams
        if self._streams[tenant] >= allowed:
            raise TooManyStreams(f"tenant {tenant!r} already has {allowed} progress streams "
                                 f"open on this worker (RESTYLE_TENANT_MAX_STREAMS)")
        self._streams[tenant] += 1
        try:
            yield
        finally:
            self._streams[tenant] -= 1


def limit_middleware(limiter: TenantLimiter):
    """After authentication: submitting requests count against their tenant's rate."""

    @aioweb.middleware
    async def limit(request: aioweb.Request, handler):
        principal = request.get(PRINCIPAL)
        if principal is None or request.method in READ_METHODS:
            return await handler(request)
        allowed, headers = limiter.submit(principal.tenant)
        if not allowed:
            return refusal(429, "rate_limited", f"tenant {principal.tenant!r} may submit "
                           f"{headers['RateLimit-Limit']} requests per window; retry in "
                           f"{headers['Retry-After']} s", headers)
        response = await handler(request)
        if not response.prepared:
            response.headers.update(headers)
        return response

    return limit
