"""What a worker taking over a partition reads of the requests a dead worker held
(streams/core/inherited.py): the first ones past the group's commit, on the real broker, and
which partitions count as taken over at all."""
from __future__ import annotations

import asyncio
import time
import uuid

from aiokafka import AIOKafkaConsumer, TopicPartition
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from streams.core.inherited import first_uncommitted, newly_taken

TOPICS = frozenset({"render"})


def tp(partition: int, topic: str = "render") -> TopicPartition:
    return TopicPartition(topic, partition)


def test_only_partitions_another_worker_may_have_held_are_taken_over():
    # The first assignment: everything of the request topics (nothing else).
    taken, held = newly_taken(set(), [tp(0), tp(1), tp(0, "other")], TOPICS, None, 4)
    assert taken == [tp(0), tp(1)] and held == {tp(0), tp(1)}
    # The next generation: a worker joined and took partition 1; this one keeps 0 and gets 2.
    taken, held = newly_taken(held, [tp(0), tp(2)], TOPICS, 4, 5)
    assert taken == [tp(2)] and held == {tp(0), tp(2)}
    # Out of the group for a generation (stopped past its session timeout): what it gets back
    # may have passed through a worker that died meanwhile.
    taken, held = newly_taken(held, [tp(0), tp(2)], TOPICS, 5, 7)
    assert taken == [tp(0), tp(2)]


def requests_topic(bootstrap: str, counts: list[int]) -> str:
    """A topic with counts[p] requests on partition p (values name their job)."""
    name = f"restyle-tests.inherited-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 2})
    admin.create_topics([NewTopic(name, len(counts), 1)])[name].result(30)
    producer = Producer({"bootstrap.servers": bootstrap, "log_level": 2})
    for partition, count in enumerate(counts):
        for n in range(count):
            producer.produce(name, f"job-{partition}-{n}".encode(), partition=partition)
    assert producer.flush(30) == 0
    return name


async def commit(bootstrap: str, group: str, offsets: dict[TopicPartition, int]) -> None:
    """What the dead worker's group committed before it died."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit(offsets)
    finally:
        await consumer.stop()


def test_the_requests_read_are_the_first_past_the_commit_and_no_more(e2e):
    bootstrap = e2e.endpoints["kafka_bootstrap"]
    topic, group = requests_topic(bootstrap, [6, 2, 3]), f"inherited-{uuid.uuid4().hex[:8]}"
    committed, uncommitted, done = TopicPartition(topic, 0), TopicPartition(topic, 1), \
        TopicPartition(topic, 2)
    asyncio.run(commit(bootstrap, group, {committed: 2, done: 3}))

    read = asyncio.run(first_uncommitted({"bootstrap_servers": bootstrap}, group,
                                         [committed, uncommitted, done], 3))
    assert sorted((r.partition, r.offset, r.value.decode()) for r in read) == [
        (0, 2, "job-0-2"), (0, 3, "job-0-3"), (0, 4, "job-0-4"),  # 3 at most, from the commit
        (1, 0, "job-1-0"), (1, 1, "job-1-1"),  # nothing committed: from the start, to the end
    ]  # and nothing of a partition whose requests were all done


def test_a_worker_whose_event_loop_stalls_still_reads_the_requests_it_took_over(e2e):
    """A GPU worker starting its first render can hold its event loop for a second or more
    at a time (on a busy CPU host, longer). The read must not take such a stall for a log
    with nothing more in it: the job would show a render nobody makes. (A read that counted
    a second of quiet in wall-clock time came back empty in about one run in five here.)"""
    bootstrap = e2e.endpoints["kafka_bootstrap"]
    topic, group = requests_topic(bootstrap, [2]), f"inherited-{uuid.uuid4().hex[:8]}"

    async def read_beside_a_stalling_loop() -> list:
        async def stall():
            while True:
                await asyncio.sleep(0.005)
                time.sleep(1.2)  # what a render blocking the loop does

        staller = asyncio.ensure_future(stall())
        try:
            return await first_uncommitted({"bootstrap_servers": bootstrap}, group,
                                           [tp(0, topic)], 3)
        finally:
            staller.cancel()

    read = asyncio.run(read_beside_a_stalling_loop())
    assert [(r.offset, r.value.decode()) for r in read] == [(0, "job-0-0"), (1, "job-0-1")]


def test_a_read_the_broker_refused_is_tried_again(monkeypatch):
    """The broker refuses the first two reads (unreachable, or busy with the rebalance that
    gave this worker the partition): the third announces the request."""
    from types import SimpleNamespace

    from aiokafka.errors import KafkaConnectionError

    from streams.core import inherited

    refusals = [KafkaConnectionError("refused"), KafkaConnectionError("refused")]

    async def read(connection, group, partitions, count):
        if refusals:
            raise refusals.pop()
        return [SimpleNamespace(topic="render", partition=0, offset=7, value=b"job-7")]

    monkeypatch.setattr(inherited, "first_uncommitted", read)
    announced = []

    async def take_over():
        async def announce(job_id, spot, at):
            announced.append((job_id, spot.offset))
        work = inherited.InheritedWork({}, "restyle-gpu", ["render"], 3,
                                       lambda value: value.decode(), announce)
        work.assigned([tp(0)], 1)
        await asyncio.gather(*work._reads)

    asyncio.run(take_over())
    assert announced == [("job-7", 7)] and not refusals
