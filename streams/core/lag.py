"""Consumer lag per group, topic and partition: what each worker pool has not processed yet (the
broker's end offset minus the group's committed offset), exported as Prometheus gauges by the CPU
workers every RESTYLE_LAG_INTERVAL_S. The GPU pool's queue depth is its lag on the render topics.
KEDA scales on the same figure (k8s/base/autoscaling.yaml).

On the embedded Tansu broker there are no figures: its answer to the admin client's request for
a group's committed offsets cannot be read (aiokafka 0.14 drops the connection), so the report
says so once and exports nothing. A broker that does not answer is asked less and less often
(twice the wait after each failure in a row, up to MAX_RETRY_WAIT_S): each try opens two clients,
and on Tansu each failure is a connection aiokafka drops with a traceback in the log."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from streams.core.app import consumer_group
from streams.core.kafka import client_options
from streams.core.metrics import CONSUMER_LAG, GPU_QUEUE_DEPTH
from streams.core.settings import Settings
from streams.core.topics import partition_counts

log = logging.getLogger("restyle.lag")

MAX_RETRY_WAIT_S = 120.0


@dataclass(frozen=True)
class Lag:
    group: str
    topic: str
    partition: int
    committed: int | None  # None: the group has committed nothing there yet
    end: int

    @property
    def records(self) -> int:
        return max(0, self.end - (self.committed or 0))


async def group_lags(settings: Settings, groups: dict[str, list[str]]) -> list[Lag]:
    """groups: consumer group -> topics to report even where it has committed nothing (a
    queue nobody has read yet still has a depth). Every partition the group has committed
    offsets for is reported too."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**client_options(settings), request_timeout_ms=10000)
    reader = AIOKafkaConsumer(**client_options(settings), enable_auto_commit=False)
    await admin.start()
    try:
        await reader.start()
        committed: dict[str, dict] = {}
        partitions: set = set()
        for group in groups:
            offsets = await admin.list_consumer_group_offsets(group)
            committed[group] = {tp: meta.offset for tp, meta in offsets.items()
                                if meta.offset >= 0}
            partitions |= set(committed[group])
        wanted = sorted({topic for topics in groups.values() for topic in topics})
        for topic, count in (await partition_counts(admin, wanted) if wanted else {}).items():
            partitions |= {TopicPartition(topic, n) for n in range(count)}
        ends = await reader.end_offsets(list(partitions)) if partitions else {}
        found = []
        for group, topics in groups.items():
            mine = set(committed[group]) | {tp for tp in partitions if tp.topic in topics}
            for tp in sorted(mine):
                found.append(Lag(group, tp.topic, tp.partition, committed[group].get(tp),
                                 ends.get(tp, 0)))
        return found
    finally:
        await reader.stop()
        await admin.close()


def pools(settings: Settings) -> dict[str, list[str]]:
    """Each worker pool's consumer group, with the request topics it must report even before
    it has committed anything there."""
    topics = settings.topics
    return {consumer_group(settings, "cpu"): [],
            consumer_group(settings, "gpu"): [topics.render, topics.render_batch],
            consumer_group(settings, "trainer"): [topics.train]}


class LagReport:
    """Reads every pool's lag and sets the gauges, each time report() is called (a worker
    timer). A broker that does not answer leaves the last figures rather than stopping the
    worker; the first failure in a row is a warning, the rest are debug lines."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.pools = pools(settings)
        self.gpu_group = consumer_group(settings, "gpu")
        self.failures = 0  # in a row
        self.next_try = 0.0

    async def report(self) -> None:
        now = time.monotonic()
        if now < self.next_try:
            return
        try:
            lags = await group_lags(self.settings, self.pools)
        except Exception as exc:  # a later report tries again
            log.log(logging.DEBUG if self.failures else logging.WARNING,
                    "could not read the consumer lag: %s: %s", type(exc).__name__, exc)
            self.failures += 1
            self.next_try = now + min(MAX_RETRY_WAIT_S,
                                      self.settings.lag_interval_s * 2 ** self.failures)
            return
        self.failures = 0
        export(lags, self.gpu_group, self.pools[self.gpu_group])


def export(lags: list[Lag], gpu_group: str, render_topics: list[str]) -> None:
    """Set the gauges: each partition's lag, and the GPU pool's queue per render topic."""
    CONSUMER_LAG.clear()
    depth = {topic: 0 for topic in render_topics}
    for lag in lags:
        CONSUMER_LAG.labels(lag.group, lag.topic, str(lag.partition)).set(lag.records)
        if lag.group == gpu_group and lag.topic in depth:
            depth[lag.topic] += lag.records
    for topic, records in depth.items():
        GPU_QUEUE_DEPTH.labels(topic).set(records)
