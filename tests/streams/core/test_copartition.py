"""The tracker is called in-process from the stage that starts or ends a job only where its
table write lands in the partition the job-events topic would have given the event: the
job's key hashed as every Kafka client hashes it, on a partition this worker holds. The event
is written to job-events all the same, and the tracker's agent handles it there unless the
in-process call did."""
from __future__ import annotations

import asyncio
import pytest
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.structs import TopicPartition

from streams.core.copartition import key_partition, lands_in_hand
from streams.core.keyed_locks import KeyedLocks
from streams.core.owner_claims import FORGOTTEN_AFTER_S, OwnerClaims

JOB_IDS = [f"job-{n}" for n in range(200)] + ["", "ü-ñ", "a" * 300]


@pytest.mark.parametrize("partitions", [1, 3, 6, 12, 64])
def test_a_key_lands_where_aiokafka_and_faust_put_it(partitions):
    place = DefaultPartitioner()
    everyone = list(range(partitions))
    for job_id in JOB_IDS:
        key = job_id.encode()
        assert key_partition(key, partitions) == place(key, everyone, everyone)


def test_its_hash_is_the_java_clients_murmur2():
    """Java clients, and librdkafka's `murmur2_random` partitioner (confluent-kafka), hash
    keys with this murmur2: these are the vectors Kafka's own tests check it against."""
    java_vectors = {b"21": -973932308, b"foobar": -790332482,
                    b"a-little-bit-long-string": -985981536,
                    b"a-little-bit-longer-string": -1486304829,
                    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
                    b"abc": 479470107}
    for key, signed in java_vectors.items():
        assert key_partition(key, 2**31) == signed & 0x7FFFFFFF  # (the hash, made positive)


class Consumer:
    """faust's consumer, as lands_in_hand asks it: partition counts and the assignment."""

    def __init__(self, partitions: dict[str, int], held: set[TopicPartition]):
        self.partitions, self.held = partitions, held

    def topic_partitions(self, topic):
        return self.partitions.get(topic)

    def assignment(self):
        return self.held


def test_the_tracker_is_called_in_process_only_where_the_write_lands_in_hand():
    job_id = "job-7"
    partition = key_partition(job_id.encode(), 6)
    other = (partition + 1) % 6
    held = {TopicPartition("restyle.job-events", partition),
            TopicPartition("restyle.uploads", partition)}
    worker = Consumer({"restyle.job-events": 6}, held)

    assert lands_in_hand(worker, "restyle.job-events", job_id,
                         partition)
    # The upload sat elsewhere (keyed otherwise, or by another partitioner): through the topic.
    assert not lands_in_hand(worker, "restyle.job-events", job_id,
                             other)
    # This worker does not hold the job's partition of job-events.
    assert not lands_in_hand(Consumer({"restyle.job-events": 6}, set()), "restyle.job-events",
                             job_id, partition)
    # Not known yet (no metadata), or outside a handled message.
    assert not lands_in_hand(Consumer({}, held), "restyle.job-events", job_id,
                             partition)
    assert not lands_in_hand(worker, "restyle.job-events", job_id, None)


def test_one_event_of_a_job_at_a_time_others_meanwhile():
    locks, seen = KeyedLocks(), []

    async def handle(key, name, pause):
        async with locks.holding(key):
            seen.append(f"{name} starts")
            await asyncio.sleep(pause)
            seen.append(f"{name} ends")

    async def main():
        await asyncio.gather(handle("job-1", "first", 0.05), handle("job-1", "second", 0),
                             handle("job-2", "other", 0.01))

    asyncio.run(main())
    assert seen.index("first ends") < seen.index("second starts")
    assert seen.index("other ends") < seen.index("first ends")  # another job never waits
    assert len(locks) == 0  # nothing kept once nobody holds a key


def test_a_record_handed_over_in_process_is_passed_by_only_where_that_call_handled_it():
    """The tracker's agent reads every record the tracker was handed in-process: it passes by
    the ones the in-process call handled, waits for one still being handled, and handles the
    rest itself (the call failed, its chain was dropped, or another process wrote them)."""
    topic = "restyle.job-events"

    async def main():
        claims = OwnerClaims()
        handled = claims.open(topic, b"job-1", b'{"kind":"submitted"}')
        refused = claims.open(topic, b"job-2", b'{"kind":"completed"}')
        running = claims.open(topic, b"job-3", b'{"kind":"completed"}')
        handled.handled()
        refused.refused()
        handled.refused()  # (too late: it was handled)
        reader = asyncio.ensure_future(claims.handled_here(topic, b"job-3",
                                                           b'{"kind":"completed"}'))
        await asyncio.sleep(0.01)
        assert not reader.done()  # the agent waits for the call's outcome
        running.handled()
        return [await claims.handled_here(topic, b"job-1", b'{"kind":"submitted"}'),
                await claims.handled_here(topic, b"job-2", b'{"kind":"completed"}'),
                await reader,
                # Read again (a replay), or written by another process: handled by the agent.
                await claims.handled_here(topic, b"job-1", b'{"kind":"submitted"}'),
                await claims.handled_here(topic, b"job-9", b'{"kind":"submitted"}'),
                len(claims)]

    assert asyncio.run(main()) == [True, False, True, False, False, 0]


def test_claims_on_records_this_worker_never_reads_are_forgotten():
    now = [1000.0]

    async def main():
        claims = OwnerClaims(clock=lambda: now[0])
        claims.open("t", b"k", b"v").handled()
        still_running = claims.open("t", b"k2", b"v")
        now[0] += FORGOTTEN_AFTER_S + 1
        claims.open("t", b"k3", b"v")
        left = len(claims)
        still_running.handled()
        return left

    assert asyncio.run(main()) == 2  # the handled one forgotten; a running one never is
