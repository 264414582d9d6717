"""Health and Prometheus metrics pages, served by every worker (CPU and GPU)."""
from __future__ import annotations

import time

from aiohttp import web as aioweb
from faust import web

from streams.core.metrics import render_metrics
from streams.core.runtime import Runtime


def register(rt: Runtime) -> None:
    app = rt.app
    started = time.time()

    @app.page("/healthz")
    class Health(web.View):
        async def get(self, request: web.Request) -> web.Response:
            # Ready once this worker owns partitions: before that it cannot process anything.
            assigned = bool(app.consumer.assignment()) and not app.rebalancing
            body = {"status": "ok" if assigned else "starting",
                    "uptime_s": round(time.time() - started, 1)}
            return self.json(body, status=200 if assigned else 503)

    @app.page("/metrics")
    class Metrics(web.View):
        async def get(self, request: web.Request) -> web.Response:
            return aioweb.Response(body=render_metrics(), headers={
                "Content-Type": "text/plain; version=0.0.4; charset=utf-8"})
