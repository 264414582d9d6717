"""Whether a result the tracker is about to publish was published already, by a tracker that
stopped before it could store the job's end.

The tracker publishes a finished job's result (acknowledged), then stores the job's end in the
jobs table. A tracker killed between the two leaves the event that ended the job uncommitted:
the partition's next owner replays it, finds the job not ended, and would publish the result a
second time. Kafka transactions would tie the two writes together, but not every Kafka-protocol
broker has them (Tansu has none), so the next owner reads instead of trusting: an event it
may not be the first to process (one below the partition's end offset when it took the
partition) has its result looked up on the results topic first, among the results published
since shortly before the event was written. One read of the results topic per partition
assignment, and none at all for the events that arrive after it.
"""
from __future__ import annotations

import asyncio
import json
import logging

from aiokafka import AIOKafkaConsumer, TopicPartition

log = logging.getLogger("restyle")

READ_TIMEOUT_S = 30.0


class PublishedResults:
    def __init__(self, connection: dict, results_topic: str, partitions: int,
                 clock_skew_s: float):
        """connection: aiokafka client options (streams.core.kafka.client_options);
        partitions: the results topic's partition count; clock_skew_s: how far apart the clocks of the hosts that write job events and
        results may be (a result is looked for from that long before its event)."""
        self.connection, self.topic, self.clock_skew_s = connection, results_topic, clock_skew_s
        self.partitions = partitions
        # Each job-events partition's end offset when this process first handled an event
        # from it in this assignment: below it, an event may have been handled before.
        self._horizons: dict = {}
        self._since: float | None = None  # the results read so far were written after this
        self._published: set[tuple[str, float]] = set()  # (job id, finished_at) of each

    def forget(self) -> None:
        """Partitions were revoked or assigned: another process may have published since."""
        self._horizons.clear()
        self._since = None
        self._published.clear()

    async def may_be_replayed(self, consumer, tp, offset: int) -> bool:
        """Whether the event at offset of tp may have been handled by a previous owner.
        consumer: faust's (asked once per partition and assignment for its end offset)."""
        if tp not in self._horizons:
            self._horizons[tp] = (await consumer.highwaters(tp))[tp]
        return offset < self._horizons[tp]

    async def contains(self, job_id: str, finished_at: float, written_at: float) -> bool:
        """Whether a result of job_id that finished at finished_at is on the results topic
        (written_at: when the event that ended the job was written, in seconds)."""
        since = written_at - self.clock_skew_s
        if self._since is None or since < self._since:
            self._published |= await asyncio.wait_for(
                results_written_since(self.connection, self.topic, self.partitions, since),
                READ_TIMEOUT_S)
            self._since = since
        return (job_id, finished_at) in self._published


async def results_written_since(connection: dict, topic: str, partitions: int, since: float
                                ) -> set[tuple[str, float]]:
    """(job id, finished_at) of every result on topic (of that many partitions) written at
    or after since (seconds), read up to the topic's end as it is now."""
    consumer = AIOKafkaConsumer(**connection, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        every = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(every)
        since_ms = int(since * 1000)
        starts = await consumer.offsets_for_times({tp: since_ms for tp in every})
        ends = await consumer.end_offsets(every)
        reading = {}
        for tp in every:
            found = starts.get(tp)
            if found is not None and found.offset < ends[tp]:
                consumer.seek(tp, found.offset)
                reading[tp] = ends[tp]
        published: set[tuple[str, float]] = set()
        while reading:
            batches = await consumer.getmany(*reading, timeout_ms=500)
            for tp, messages in batches.items():
                for message in messages:
                    # A broker's time index may point earlier than asked: Tansu's points at
                    # the partition's first record (read from there, it costs more there).
                    if message.offset < reading.get(tp, 0) and message.timestamp >= since_ms:
                        published |= _identity(message.key, message.value)
            for tp in list(reading):
                if await consumer.position(tp) >= reading[tp]:
                    del reading[tp]
        return published
    finally:
        await consumer.stop()


def _identity(key: bytes | None, value: bytes | None) -> set[tuple[str, float]]:
    """{(job id, finished_at)} of a result record; empty for one that is not a result."""
    try:
        finished_at = json.loads(value)["finished_at"]
        return {(key.decode(), float(finished_at))}
    except (AttributeError, KeyError, TypeError, ValueError):
        log.warning("a record on the results topic that is not a result was skipped")
        return set()
