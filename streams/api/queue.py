"""Queue positions: how many requests wait ahead of a job on its GPU (or trainer) request
topic. A job's request sits at an offset of one partition; the workers of that consumer group
have committed that partition up to the oldest request they have not answered. What lies
between is ahead of it: requests the pool has not taken, or holds unanswered (a GPU worker
prefetches a few). Partitions are served in parallel, so a position counts the job's own
partition only: it says how much is in front of the job, not an exact wait.

A partition's committed offset is read once a second at most, whatever the request rate."""
from __future__ import annotations

import asyncio
import logging
import time

from schemas.jobs import QueueSpot
from streams.core.kafka import client_options
from streams.core.settings import Settings

log = logging.getLogger("restyle.queue")
FRESH_FOR_S = 1.0


class QueuePositions:
    def __init__(self, settings: Settings):
        self.settings = settings
        # The consumer group that serves each request topic.
        self.groups = {settings.topics.render: f"{settings.app_id}-gpu",
                       settings.topics.render_batch: f"{settings.app_id}-gpu",
                       settings.topics.train: f"{settings.app_id}-trainer"}
        # (group, topic, partition) -> (when read, the committed offset)
        self._committed: dict[tuple[str, str, int], tuple[float, int | None]] = {}
        self._lock = asyncio.Lock()
        self._readers: dict = {}

    async def ahead(self, spot: QueueSpot) -> int | None:
        """Requests ahead of the one at spot (0: it is next, or being worked on); None when
        it cannot be known now (the broker does not answer, no worker has committed yet)."""
        group = self.groups.get(spot.topic)
        if group is None:
            return None
        try:
            done = await self._offsets(group, spot.topic, spot.partition)
        except Exception as exc:  # a position is a courtesy: never fail the page for it
            log.info("queue position unknown: %s", exc)
            return None
        return None if done is None else max(0, spot.offset - done)

    async def _offsets(self, group: str, topic: str, partition: int) -> int | None:
        async with self._lock:
            read_at, offset = self._committed.get((group, topic, partition), (0.0, None))
            if time.monotonic() - read_at < FRESH_FOR_S:
                return offset
            from aiokafka import TopicPartition

            # A consumer in the group that never joins it (nothing assigned, nothing
            # committed): it only asks the group's coordinator for its committed offsets.
            reader, where = await self._reader(group), TopicPartition(topic, partition)
            offset = await reader.committed(where)
            if offset is None:  # nothing committed yet: the pool reads from the log's start
                offset = (await reader.beginning_offsets([where]))[where]
            self._committed[(group, topic, partition)] = (time.monotonic(), offset)
            return offset

    async def _reader(self, group: str):
        if group not in self._readers:
            from aiokafka import AIOKafkaConsumer

            reader = AIOKafkaConsumer(**client_options(self.settings), group_id=group,
                                      enable_auto_commit=False)
            await reader.start()
            self._readers[group] = reader
        return self._readers[group]

    async def close(self) -> None:
        for reader in self._readers.values():
            await reader.stop()
        self._readers.clear()
