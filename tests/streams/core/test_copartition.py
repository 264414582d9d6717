"""The tracker is called in-process from the stage that starts or ends a job only where its
table write lands in the partition the job-events topic would have given the event: the
job's key hashed as every Kafka client hashes it, on a partition this worker holds."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.structs import TopicPartition

from streams.core.copartition import key_partition, lands_in_hand
from streams.core.keyed_locks import KeyedLocks

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


@dataclass
class Message:
    topic: str
    partition: int


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
                         Message("restyle.uploads", partition))
    # The upload sat elsewhere (keyed otherwise, or by another partitioner): through the topic.
    assert not lands_in_hand(worker, "restyle.job-events", job_id,
                             Message("restyle.uploads", other))
    # This worker does not hold the job's partition of job-events.
    assert not lands_in_hand(Consumer({"restyle.job-events": 6}, set()), "restyle.job-events",
                             job_id, Message("restyle.uploads", partition))
    # Not known yet (no metadata), or outside a handled message.
    assert not lands_in_hand(Consumer({}, held), "restyle.job-events", job_id,
                             Message("restyle.uploads", partition))
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
