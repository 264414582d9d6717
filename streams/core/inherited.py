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

A read that fails (the broker unreachable, or busy with the group's rebalance) is tried
again, READ_ATTEMPTS times in all, with jittered backoff (tenacity); after that the job shows
`generating` until its render starts again, as it would without this.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable, Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from tenacity import (AsyncRetrying, retry_if_exception_type, stop_after_attempt,
                      wait_random_exponential)

from schemas.jobs import QueueSpot

log = logging.getLogger("restyle")

# Each fetch waits this long for records at most.
FETCH_WAIT_MS = 300
# The read ends once this many fetches in a row found nothing (not at the first empty one:
# Tansu answers some fetches empty while records wait). Counted in fetches, not in seconds: a
# worker starting its first render can hold its event loop for a second or more, which is no
# sign that the log has nothing more (a read cut short by such a stall announced nothing).
QUIET_FETCHES = 4
# A read bounded in fetches too (about 10 s of them on a free event loop): what it announces
# is moot once the new owner renders the requests. What was read by then is announced.
MAX_FETCHES = 33
# And in time, however stalled the loop (what was read by then is announced)...
READ_WITHIN_S = 30.0
# ...and against a broker that does not answer at all, even to start the read (nothing is).
READ_TIMEOUT_S = 45.0
# A read the broker refused (unreachable, or busy with the group's rebalance) is tried again.
READ_ATTEMPTS = 3

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
        self.generation: int | None = None  # the group generation of that assignment
        self._reads: set[asyncio.Task] = set()  # running (a task needs a reference kept)

    def assigned(self, assigned: Iterable[TopicPartition], generation: int | None = None
                 ) -> None:
        """The group gave this worker `assigned` in `generation`: announce the requests
        waiting on the partitions it did not hold before (in the background: an assignment
        waits for nothing)."""
        taken, self.held = newly_taken(self.held, assigned, self.topics, self.generation,
                                       generation)
        self.generation = generation
        if taken:
            read = asyncio.ensure_future(self._announce(taken, self.clock()))
            self._reads.add(read)
            read.add_done_callback(self._reads.discard)

    async def _announce(self, partitions: list[TopicPartition], at: float) -> None:
        # Not cancelled by a revocation: a read outliving its assignment announces what is
        # moot by then, which the tracker ignores, and one cut short would never be made
        # again for a partition this worker keeps.
        spots = []
        try:
            records = await self._read(partitions)
            for record in records:
                try:
                    job_id = self.job_id_of(record.value or b"")
                except ValueError:  # pydantic's ValidationError too
                    continue  # not a request (the consuming stage dead-letters it)
                spot = QueueSpot(topic=record.topic, partition=record.partition,
                                 offset=record.offset)
                await self.announce(job_id, spot, at)
                spots.append(f"{job_id} ({spot.topic}[{spot.partition}]@{spot.offset})")
        except Exception as exc:  # noqa: BLE001 - the jobs show `generating` a while longer
            log.warning("could not announce the requests waiting on %s (%s: %s)",
                        _named(partitions), type(exc).__name__, exc)
        if spots:
            log.info("took over %d request(s) past the commit: %s", len(spots), ", ".join(spots))

    async def _read(self, partitions: list[TopicPartition]) -> list:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(READ_ATTEMPTS), reraise=True,
            wait=wait_random_exponential(multiplier=0.5, max=4),
            retry=retry_if_exception_type(KafkaError))  # not a read that ran out of time
        async for attempt in retrying:
            with attempt:
                # Bounded twice: the read itself stops fetching, and a broker that does not
                # answer at all cannot hold it longer than READ_TIMEOUT_S.
                return await asyncio.wait_for(
                    first_uncommitted(self.connection, self.group, partitions,
                                      self.per_partition), READ_TIMEOUT_S)


def newly_taken(held: set[TopicPartition], assigned: Iterable, topics: frozenset[str],
                previous: int | None, generation: int | None
                ) -> tuple[list[TopicPartition], set[TopicPartition]]:
    """(the partitions of `topics` in `assigned` that another worker may have held since
    this one last did, every partition of `topics` it holds now). A worker in each of its
    group's generations held what it keeps throughout; one that skipped a generation (stopped
    past its session timeout, then rejoined) held nothing in between."""
    if previous is not None and generation is not None and generation > previous + 1:
        held = set()
    # faust's TPs, as aiokafka's own (which its consumer insists on)
    mine = {TopicPartition(tp.topic, tp.partition) for tp in assigned or ()
            if tp.topic in topics}
    return sorted(mine - held), mine


async def first_uncommitted(connection: dict, group: str, partitions: list[TopicPartition],
                            count: int, fetches: int = MAX_FETCHES,
                            within_s: float = READ_WITHIN_S) -> list:
    """Up to `count` records of each partition from the group's committed offset on (from
    the log's start where it committed none), read until the log has no more (QUIET_FETCHES
    fetches in a row found none), or what `fetches` fetches read, or what was read within_s
    after the start. Reads without joining the group. The log's end is not asked for: Tansu's
    answer to it is not exact."""
    deadline = time.monotonic() + within_s
    consumer = AIOKafkaConsumer(group_id=group, enable_auto_commit=False,
                                auto_offset_reset="earliest",
                                fetch_max_wait_ms=FETCH_WAIT_MS // 5, **connection)
    try:
        await consumer.start()
        consumer.assign(partitions)
        starts: dict[TopicPartition, int] = {}
        for tp in partitions:
            committed = await consumer.committed(tp)
            if committed is None:
                await consumer.seek_to_beginning(tp)
                committed = await consumer.position(tp)
            else:
                consumer.seek(tp, committed)
            starts[tp] = committed
        found: dict[TopicPartition, list] = {tp: [] for tp in starts}
        reading, empty = set(starts), 0
        for _ in range(fetches):
            if not reading or empty >= QUIET_FETCHES or time.monotonic() > deadline:
                break
            fetched = await consumer.getmany(*reading, timeout_ms=FETCH_WAIT_MS)
            empty += 1
            for tp, records in fetched.items():
                # From the commit on only (a commit the broker no longer has resets the read
                # to the log's start), and no more than a worker holds.
                kept = [r for r in records if r.offset >= starts[tp]]
                if kept:
                    empty = 0
                found[tp] += kept
                del found[tp][count:]
                if len(found[tp]) >= count:
                    reading.discard(tp)
                    consumer.pause(tp)
        return [record for records in found.values() for record in records]
    finally:
        await consumer.stop()


def _named(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions)
