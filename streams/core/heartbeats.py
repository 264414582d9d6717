"""A worker stays in its consumer group while faust takes up its new partitions.

aiokafka stops its heartbeats before it joins the group and starts them again only once the
assignment callback has returned, and faust's callback opens a RocksDB store for every
partition of every table (six tables of four partitions on a CPU worker). On a busy machine
that took 7 to 12 s, past the 6 s session timeout: the broker dropped the member, the worker
rejoined, was assigned the same partitions, opened the same stores, and was dropped again. An
end-to-end run on two loaded cores saw this for two minutes on end, the worker never ready.

From the moment the group's answer names its generation, the member is part of it; Kafka's
own client heartbeats from a thread of its own throughout the callback. So restyle starts
aiokafka's heartbeat before the callback rather than after it (a second start afterwards is
a no-op). The callback counts as activity for aiokafka's idle check, which would otherwise
make the now-running heartbeat leave the group once a callback outlasts the max poll interval
(8 s in the end-to-end suite: a fresh worker left, rejoined and opened every store again). A
callback that never ends is caught by restyle's rebalance watch (rebalance_watch.py:
RESTYLE_REBALANCE_STUCK_S), or at a worker's first start by its startup probe.
"""
from __future__ import annotations

from aiokafka.consumer.group_coordinator import GroupCoordinator


def heartbeat_through_assignment() -> None:
    """Install the change for every aiokafka consumer of this process (idempotent)."""
    original = GroupCoordinator._on_join_complete
    if getattr(original, "heartbeats_first", False):
        return

    async def on_join_complete(self, *args, **kwargs):
        self._start_heartbeat_task()  # no-op when it runs already
        with self._subscription.fetch_context():  # taking up the assignment is not idleness
            return await original(self, *args, **kwargs)

    on_join_complete.heartbeats_first = True
    on_join_complete.__wrapped__ = original
    GroupCoordinator._on_join_complete = on_join_complete
