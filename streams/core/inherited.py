"""The requests a worker takes over from one that died holding them.

A GPU worker or trainer killed mid-render (kill -9, a lost node) says nothing more: its job
goes on showing `generating`, with the progress of a render nobody is making, until the
request's next owner takes it again. The request itself, uncommitted, waits for that owner.
So a worker that takes a partition it did not hold reads the first requests past the committed
offset (those the previous owner had taken: a worker takes its requests in order, and holds a
few at most) and says of each that its job waits for a worker again, with its place in the
queue (`requeued`).

The announcement is dated from the assignment, and the tracker takes it only for a job still
`generating` or `training` that has not moved since (streams/tracking/jobstate.py). A request
that was only waiting changes nothing, and neither does one this worker has started meanwhile
(the read runs beside the stream, not before it).

A read that fails is not tried again: the job shows `generating` until its render starts
again, as it would without this.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable, Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.jobs import QueueSpot

log = logging.getLogger("restyle")

# Under the group's rebalance timeout: a read outliving the assignment it was made for is moot.
READ_TIMEOUT_S = 10.0
# A fetch that finds nothing in this long ends a partition's read.
FETCH_WAIT_MS = 300

Announce = Callable[[str, QueueSpot, float], Awaitable[None]]
# A request's job id, from its record's value (ValueError: not a request).
JobIdOf = Callable[[bytes], str]


class InheritedWork:
    def __init__(self, connection: dict, group: str, topics: Iterable[str], per_partition: int,
                 job_id_of: JobIdOf, announce: Announce, clock=time.time):
        """connection: aiokafka client options (streams.core.kafka.client_options); group: the
        worker's consumer group (whose committed offsets say where its requests wait); topics:
        the request topics it takes; per_partition: how many requests past the committed
        offset a worker may have held; job_id_of: a request's job id; announce(job_id, spot,
        at): says that the job waits again, as of `at`."""
        self.connection, self.group, self.topics = connection, group, frozenset(topics)
        self.job_id_of = job_id_of
        self.per_partition, self.announce, self.clock = per_partition, announce, clock
        self.held: set[TopicPartition] = set()
        self._reads: set[asyncio.Task] = set()

    def assigned(self, assigned: Iterable[TopicPartition]) -> None:
        """The group gave this worker `assigned`: announce the requests waiting on the
        partitions it did not hold before (in the background: an assignment waits for
        nothing)."""
        # faust's TPs, as aiokafka's own (which its consumer insists on)
        mine = {TopicPartition(tp.topic, tp.partition) for tp in assigned or ()
                if tp.topic in self.topics}
        taken, self.held = sorted(mine - self.held), mine
        if taken:
            read = asyncio.ensure_future(self._announce(taken, self.clock()))
            self._reads.add(read)
            read.add_done_callback(self._reads.discard)

    def revoked(self) -> None:
        for read in list(self._reads):
            read.cancel()

    async def _announce(self, partitions: list[TopicPartition], at: float) -> None:
        try:
            records = await asyncio.wait_for(
                first_uncommitted(self.connection, self.group, partitions, self.per_partition),
                READ_TIMEOUT_S)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the jobs show `generating` a while longer
            log.warning("could not read the requests waiting on %s (%s: %s)",
                        _named(partitions), type(exc).__name__, exc)
            return
        spots = []
        for record in records:
            try:
                job_id = self.job_id_of(record.value or b"")
            except ValueError:  # pydantic's ValidationError too
                continue  # not a request (the consuming stage dead-letters it)
            spot = QueueSpot(topic=record.topic, partition=record.partition,
                             offset=record.offset)
            await self.announce(job_id, spot, at)
            spots.append(f"{spot.topic}[{spot.partition}]@{spot.offset}")
        if spots:
            log.info("took over %d request(s) past the commit: %s", len(spots), ", ".join(spots))


async def first_uncommitted(connection: dict, group: str, partitions: list[TopicPartition],
                            count: int) -> list:
    """Up to `count` records of each partition from the group's committed offset on (from
    the log's start where it committed none). Reads without joining the group."""
    consumer = AIOKafkaConsumer(group_id=group, enable_auto_commit=False,
                                auto_offset_reset="earliest", **connection)
    await consumer.start()
    try:
        consumer.assign(partitions)
        wanted: dict[TopicPartition, int] = {}
        for tp in partitions:
            committed = await consumer.committed(tp)
            if committed is None:
                await consumer.seek_to_beginning(tp)
                committed = await consumer.position(tp)
            else:
                consumer.seek(tp, committed)
            wanted[tp] = committed + count
        found = []
        while wanted:
            fetched = await consumer.getmany(*wanted, timeout_ms=FETCH_WAIT_MS)
            if not fetched:
                break  # the rest of the log is empty
            for tp, records in fetched.items():
                found += [r for r in records if r.offset < wanted.get(tp, 0)]
                if records and records[-1].offset + 1 >= wanted.get(tp, 0):
                    wanted.pop(tp, None)
                    consumer.pause(tp)
        return found
    finally:
        await consumer.stop()


def _named(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions)
