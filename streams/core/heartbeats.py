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
a no-op). The callback is still bounded: aiokafka's heartbeat leaves the group once nothing
has been fetched for the max poll interval, and restyle's rebalance watch
(rebalance_watch.py) marks a rebalancing worker as polled while its event loop runs.
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
        return await original(self, *args, **kwargs)

    on_join_complete.heartbeats_first = True
    on_join_complete.__wrapped__ = original
    GroupCoordinator._on_join_complete = on_join_complete
