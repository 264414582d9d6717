"""Whether a result the tracker is about to publish was published already, by a tracker that
stopped before it could store the job's end.

The tracker publishes a finished job's result (acknowledged), then stores the job's end in the
jobs table. A tracker killed between the two leaves the event that ended the job uncommitted:
the partition's next owner replays it, finds the job not ended, and would publish the result a
second time. Kafka transactions would tie the two writes together, but not every Kafka-protocol
broker has them (Tansu has none), so the next owner reads instead of trusting.

An event written before this process took its partition (give or take the hosts' clock skew)
may have been handled by the partition's previous owner: its result is looked up first. A job's
result goes to the results partition of the same number as its job-events partition (both are
keyed by job id, with the same partition count), and only that partition's tracker writes it,
so one partition is read: from shortly before the first event handled since the assignment
(where a replay begins) to its end. The read starts as that first event is handled, in the
background, so a job that starts and ends after a worker starts never waits for it; it is done
once per partition and assignment (again only for an event older than what was read), and
only while events from before the assignment come. What is read is bounded, and a read that
fails is not tried again until the next assignment: the result is then published, since a
result published twice beats one never published.

A result whose send the broker did not acknowledge (a timeout, a dropped connection) may have
been written all the same; before the tracker gives up on it (the event is dead-lettered and the
sweeper would later fail the job, a second and contradictory result), the partition is read
afresh from just before the send (`written_after_all`).

Time is the test, not offsets: Tansu's answers to "where does the log end" and "which offset
was written at this time" are not exact, so the read goes on past the end it was given until a
fetch comes back empty, and each record's own timestamp decides.

The read covers a tracker that stopped. One that lost its partition while it went on working (a
long pause) is fenced where the broker has transactions: fencing.py.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Awaitable, Callable

from aiokafka import AIOKafkaConsumer, TopicPartition

log = logging.getLogger("restyle")

# A replay after a crash concerns the results of the last few seconds; a partition's last
# records this many at most are read (a broker whose time index is not exact would otherwise
# have the whole partition read).
MAX_RECORDS_READ = 5_000
# Under the consumer group's rebalance timeout: a rebalance waits for the event in hand.
READ_TIMEOUT_S = 5.0
# A fetch waits this long for records at most; one that finds none past the end the broker
# gave ends the read (the end may be said short: what came after it is read too).
FETCH_WAIT_MS = 300


class PublishedResults:
    def __init__(self, connection: dict, results_topic: str, clock_skew_s: float,
                 clock=time.time, before_read: Callable[[int], Awaitable[None]] | None = None,
                 isolation_level: str = "read_uncommitted"):
        """connection: aiokafka client options (streams.core.kafka.client_options);
        clock_skew_s: how far apart the clocks of the hosts that write job events and
        results may be; before_read(partition): awaited before a partition is read (results
        published in transactions: the partition's transactional id is registered first,
        fencing.py), and then only committed results count (isolation_level)."""
        self.connection, self.topic, self.clock_skew_s = connection, results_topic, clock_skew_s
        self.clock = clock
        self.before_read, self.isolation_level = before_read, isolation_level
        self._reads: dict[int, asyncio.Task] = {}
        self.forget()

    def forget(self) -> None:
        """Partitions were assigned or revoked: events from before now may be replays."""
        for read in self._reads.values():
            read.cancel()
        self.assigned_at = self.clock()
        self._reads = {}  # partition -> the read of its results (a set of identities)
        self._since: dict[int, float] = {}  # partition -> that read began at this time
        self._unreadable = False

    def may_be_replayed(self, written_at: float) -> bool:
        """Whether an event written at written_at may have been handled by a previous owner
        of its partition."""
        return written_at < self.assigned_at + self.clock_skew_s

    def saw(self, partition: int, written_at: float) -> None:
        """An event of partition, written at written_at, is being handled. The first one since
        the assignment is where the replay (if any) begins (faust resumes at the committed
        offset): the results written from shortly before it are read now, in the
        background, so the answer is ready by the time a replayed job's end comes."""
        if partition not in self._reads and not self._unreadable and \
                self.may_be_replayed(written_at):
            self._read(partition, written_at - 2 * self.clock_skew_s)

    def _read(self, partition: int, since: float) -> None:
        previous = self._reads.get(partition)
        if previous is not None:
            previous.cancel()
        read = asyncio.ensure_future(self._written_since(partition, since))
        read.add_done_callback(lambda done: done.cancelled() or done.exception())  # retrieved
        self._reads[partition], self._since[partition] = read, since

    async def contains(self, partition: int, job_id: str, finished_at: float | None,
                       written_at: float) -> bool | None:
        """Whether a result of job_id that finished at finished_at (None: any result of it)
        is on the results topic's partition (written_at: when the event that ended the job
        was written, in seconds); None when it could not be read (not tried again until the
        next assignment). What before_read raises is raised (fencing.Fenced: another tracker
        has the partition)."""
        if self.before_read is not None:
            await self.before_read(partition)
        if self._unreadable:
            return None
        since = written_at - self.clock_skew_s
        if partition not in self._reads or since < self._since[partition]:
            self._read(partition, since)
        read = self._reads[partition]
        try:
            published = await asyncio.wait_for(asyncio.shield(read), READ_TIMEOUT_S)
        except asyncio.CancelledError:
            if read.cancelled() and not asyncio.current_task().cancelling():
                return None  # a rebalance dropped the read: the caller publishes
            raise
        except Exception:  # noqa: BLE001 - the caller publishes; said in the log
            self._unreadable = True
            log.warning("could not read %s (partition %d) to check for results published "
                        "before a replay; results are published without that check until "
                        "the next rebalance", self.topic, partition, exc_info=True)
            return None
        if finished_at is None:
            return any(published_id == job_id for published_id, _ in published)
        return (job_id, finished_at) in published

    async def written_after_all(self, partition: int, job_id: str, finished_at: float,
                                sent_at: float) -> bool:
        """Whether the result of job_id that finished at finished_at, sent at sent_at without
        an acknowledgement, is on the partition after all. False when it is not, or when the
        partition cannot be read either (the broker is likely gone: the caller fails)."""
        try:
            if self.before_read is not None:
                await self.before_read(partition)
            written = await asyncio.wait_for(
                self._written_since(partition, sent_at - self.clock_skew_s), READ_TIMEOUT_S)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the send's own failure stands; said in the log
            log.warning("could not read %s (partition %d) to see whether the result of job %s "
                        "was written without an acknowledgement", self.topic, partition,
                        job_id, exc_info=True)
            return False
        return (job_id, finished_at) in written

    async def _written_since(self, partition: int, since: float) -> set[tuple[str, float]]:
        return await results_written_since(self.connection, self.topic, partition, since,
                                           self.isolation_level)


async def results_written_since(connection: dict, topic: str, partition: int, since: float,
                                isolation_level: str = "read_uncommitted"
                                ) -> set[tuple[str, float]]:
    """(job id, finished_at) of each result on the topic's partition written at or after since
    (seconds), read up to its end and until a fetch finds nothing more (read_committed: up to
    the last settled transaction, committed results only)."""
    consumer = AIOKafkaConsumer(**connection, group_id=None, enable_auto_commit=False,
                                fetch_max_wait_ms=FETCH_WAIT_MS // 5,
                                isolation_level=isolation_level)
    try:
        await consumer.start()
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        since_ms = int(since * 1000)
        found = (await consumer.offsets_for_times({tp: since_ms})).get(tp)
        if found is None:  # nothing written since then
            return set()
        end = (await consumer.end_offsets([tp]))[tp]
        consumer.seek(tp, max(found.offset, end - MAX_RECORDS_READ))
        published: set[tuple[str, float]] = set()
        skipped = 0
        while True:
            records = (await consumer.getmany(tp, timeout_ms=FETCH_WAIT_MS)).get(tp)
            if not records:
                if await consumer.position(tp) >= end:
                    break
                continue
            for record in records:
                if record.timestamp >= since_ms:
                    identity = _identity(record.key, record.value)
                    skipped += identity is None
                    if identity is not None:
                        published.add(identity)
        if skipped:
            log.warning("%d record(s) on %s (partition %d) are not results; skipped", skipped,
                        topic, partition)
        return published
    finally:
        await consumer.stop()


def _identity(key: bytes | None, value: bytes | None) -> tuple[str, float] | None:
    """(job id, finished_at) of a result record; None for one that is not a result."""
    try:
        return key.decode(), float(json.loads(value)["finished_at"])
    except (AttributeError, KeyError, TypeError, ValueError):
        return None
