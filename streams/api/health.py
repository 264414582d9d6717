"""Health and Prometheus metrics pages, served by every worker (CPU, GPU, trainer).

Two questions, two pages (as Kubernetes asks them):
- `/livez`: is this process worth keeping? 200 while its event loop answers, 503 once it has
  stopped for good (a broker that takes no sends, a broken GPU: Runtime.stop_worker). A
  rebalance never makes a worker "dead".
- `/readyz`: should it get work now? 200 only while it owns partitions, no rebalance or
  shutdown is under way, and it is in its consumer group (a stop past its session timeout, or
  a member its coordinator refused, is out until it has rejoined: streams/core/pauses.py).
  `/healthz` is the same page, for older probes.
"""
from __future__ import annotations

import time

from aiohttp import web as aioweb
from faust import web

from schemas import CONTRACTS_DIR
from streams.core.metrics import GC_PAUSES, render_metrics, watch_event_loop_lag
from streams.core.runtime import Runtime

# The API's description, written by `restyle contracts` (streams/api/openapi.py) and installed
# with the package.
OPENAPI_FILE = CONTRACTS_DIR / "openapi.json"

def register(rt: Runtime) -> None:
    app = rt.app
    started = time.time()

    def body(status: str) -> dict:
        answer = {"status": status, "uptime_s": round(time.time() - started, 1)}
        if rt.broken:
            answer["reason"] = rt.broken
        return answer

    def readiness() -> str:
        if rt.broken:
            return "broken"
        if rt.draining:
            return "stopping"
        if rt.pauses.out_of_group():  # (its rejoin is a rebalance too: the cause comes first)
            return "out_of_group"
        if app.rebalancing:
            return "rebalancing"
        # Before it owns partitions a worker cannot process anything.
        return "ok" if app.consumer.assignment() else "starting"

    class Live(web.View):
        async def get(self, request: web.Request) -> web.Response:
            return self.json(body("broken" if rt.broken else "ok"),
                             status=503 if rt.broken else 200)

    class Ready(web.View):
        async def get(self, request: web.Request) -> web.Response:
            status = readiness()
            return self.json(body(status), status=200 if status == "ok" else 503)

    app.task(watch_event_loop_lag)
    GC_PAUSES.install()  # and what the cycle collector's pauses add to it
    app.page("/livez")(Live)
    app.page("/readyz")(Ready)
    app.page("/healthz")(type("Health", (Ready,), {}))

    @app.page("/openapi.json")
    class OpenApi(web.View):
        async def get(self, request: web.Request) -> web.Response:
            return aioweb.Response(body=OPENAPI_FILE.read_bytes(),
                                   content_type="application/json")

    @app.page("/metrics")
    class Metrics(web.View):
        async def get(self, request: web.Request) -> web.Response:
            return aioweb.Response(body=render_metrics(), headers={
                "Content-Type": "text/plain; version=0.0.4; charset=utf-8"})
