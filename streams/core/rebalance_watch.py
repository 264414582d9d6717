"""A worker whose rebalance never ends is restarted, so it rejoins its group.

aiokafka makes a consumer that has not polled for the max poll interval leave its group, and
rejoins at its next poll. faust does not poll while a rebalance is under way: its flow control
waits for the next assignment, which needs that poll. So a worker whose rebalance outlasted the
poll interval (a table recovery on a busy machine: a second CPU worker starting beside it) was
seen out of its group for good, owning nothing, its partitions' jobs waiting (issue 15). Here a
rebalance that has not ended after RESTYLE_REBALANCE_STUCK_S stops the worker
(Runtime.stop_worker: what it had not committed is delivered again), and its supervisor
(`restyle up`, Kubernetes) starts it again, in the group. The first rebalance, at start, is
not watched: faust starts its timers once that one is over (a start that hangs is for the
startupProbe to catch).

What makes a worker leave is aiokafka's idle check: no fetch for the max poll interval, and it
leaves the group, and rejoins only once fetched from again. faust fetches nothing while a
rebalance's table recovery runs, so a recovery longer than the interval (two CPU workers
recovering at once on two cores) made the worker leave and wait for the watch above. While a
rebalance is under way, the worker now tells aiokafka it is being polled, every quarter of the
interval (Consumer.mark_polled): a worker whose event loop runs is alive, and it rejoins
promptly; one whose loop is stuck runs no timer and still leaves.

The same holds while the group coordinator has refused the worker and it has not joined
again, rebalance or not: faust fetches nothing without an assignment. Seen in the end-to-end
suite on a busy machine: the first rebalance's recovery outlasted the poll interval, aiokafka
dropped the member, faust's recovery then finished and ended the rebalance, and the worker
stayed out of its group, owning nothing, until the test gave up (3 of 4 runs beside the
fault bench).
"""
from __future__ import annotations

import time

from streams.core.consumer import group_generation
from streams.core.runtime import Runtime


def stuck_for(rebalancing: bool, since: float | None, now: float) -> tuple[float | None, float]:
    """(when the current rebalance began, how long it has lasted): since is when it began as
    far as the last look knew (None: not rebalancing then)."""
    if not rebalancing:
        return None, 0.0
    began = now if since is None else since
    return began, now - began


def rejoining(app) -> bool:
    """A rebalance is under way, or the group coordinator has refused this worker and it has
    not joined again. The second without the first was seen when the worker's first rebalance
    outlasted the poll interval on a busy machine: aiokafka dropped the member, faust then
    ended that first rebalance (its recovery finished after the revocation) and fetched
    nothing more, and aiokafka would not rejoin without a fetch."""
    return bool(app.rebalancing) or group_generation(app) == -1


def watch_rebalances(rt: Runtime) -> None:
    app, limit = rt.app, rt.settings.rebalance_stuck_s
    began: float | None = None

    @app.timer(interval=max(0.5, min(5.0, limit / 4)))
    async def restart_when_stuck() -> None:
        nonlocal began
        if rt.draining or rt.broken:
            return
        began, lasted = stuck_for(rejoining(app), began, time.monotonic())
        if lasted > limit:
            await rt.stop_worker(
                f"its rebalance has not ended in {lasted:.0f} s (RESTYLE_REBALANCE_STUCK_S "
                f"{limit:g}): out of its consumer group; restarting to rejoin it")

    @app.timer(interval=max(0.5, rt.settings.max_poll_interval_s / 4))
    async def polled_while_rebalancing() -> None:
        if rejoining(app) and not (rt.draining or rt.broken):
            await app.consumer.mark_polled()
