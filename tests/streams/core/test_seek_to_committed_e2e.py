"""After a rebalance, a partition with no commit yet is fetched again from its beginning.

faust seeks every partition to its committed offset once a rebalance is over, so that what its
stream skipped meanwhile (and restyle's consumer held back from the commit) comes again. aiokafka
does not seek a partition whose committed offset is none or 0: a worker that keeps such a
partition goes on fetching from where the previous generation got to, and the skipped messages
wait until the partition moves to another worker (the scale-out test saw a partition's jobs
finish five minutes late). restyle's seek (streams/core/consumer.py) takes such a partition back
to its beginning. Shown on the real broker, with aiokafka's own consumer.
"""
from __future__ import annotations

import asyncio
import uuid
from functools import partial

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streams.core.consumer import seek_to_committed


def fresh_topic(bootstrap: str, messages: int) -> str:
    """A topic of one partition holding `messages` records, no consumer group commits."""
    from confluent_kafka import Producer

    name = f"restyle-tests.seek-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 2})
    admin.create_topics([NewTopic(name, 1, 1)])[name].result(30)
    producer = Producer({"bootstrap.servers": bootstrap, "log_level": 2})
    for n in range(messages):
        producer.produce(name, f"message {n}".encode(), key=b"job")
    assert producer.flush(30) == 0
    return name


async def position_after_reseek(bootstrap: str, topic: str, commit: int | None, seek) -> int:
    """Fetch all of topic (as the previous generation did), optionally commit `commit`, seek
    with `seek`; the next offset the consumer would fetch."""
    partition = TopicPartition(topic, 0)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=f"{topic}-group",
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        consumer.assign([partition])
        fetched = []
        while len(fetched) < 3:
            batch = await consumer.getmany(partition, timeout_ms=5000)
            fetched += batch.get(partition, [])
        assert [record.offset for record in fetched] == [0, 1, 2]
        if commit is not None:
            await consumer.commit({partition: commit})
        await seek(consumer)
        return await consumer.position(partition)
    finally:
        await consumer.stop()


@pytest.mark.parametrize("commit", [None, 0], ids=["no-commit", "commit-0"])
def test_a_partition_never_committed_is_fetched_again_from_its_beginning(e2e, commit):
    bootstrap = e2e.endpoints["kafka_bootstrap"]
    # aiokafka alone: the fetch stays past the three messages the stream may have skipped.
    assert asyncio.run(position_after_reseek(
        bootstrap, fresh_topic(bootstrap, 3), commit, AIOKafkaConsumer.seek_to_committed)) == 3
    # restyle's seek: from the beginning, where another worker taking it over would start.
    assert asyncio.run(position_after_reseek(
        bootstrap, fresh_topic(bootstrap, 3), commit, seek_to_committed)) == 0


def test_a_table_changelog_is_left_where_the_recovery_put_it(e2e):
    bootstrap = e2e.endpoints["kafka_bootstrap"]
    topic = fresh_topic(bootstrap, 3)
    assert asyncio.run(position_after_reseek(
        bootstrap, topic, None, partial(seek_to_committed, changelog_topics=frozenset({topic})))) == 3


def test_a_committed_partition_is_fetched_again_from_its_commit(e2e):
    bootstrap = e2e.endpoints["kafka_bootstrap"]
    assert asyncio.run(position_after_reseek(
        bootstrap, fresh_topic(bootstrap, 3), 2, seek_to_committed)) == 2
