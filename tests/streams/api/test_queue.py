"""Queue positions from a real broker (Tansu): a GPU worker group that has committed its
render-request partition up to offset 2 has two requests ahead of the one at offset 4."""
from __future__ import annotations

import asyncio

from schemas.jobs import QueueSpot
from streams.api.queue import QueuePositions
from streams.core.settings import Settings
from streams.stack.embedded import start_tansu


def test_a_queue_position_counts_the_requests_ahead_on_the_same_partition(tmp_path):
    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    service, bootstrap = start_tansu(tmp_path)
    try:
        topic = "restyle.render-requests"
        admin = AdminClient({"bootstrap.servers": bootstrap})
        admin.create_topics([NewTopic(topic, 2, 1)])[topic].result()
        producer = Producer({"bootstrap.servers": bootstrap})
        for _ in range(5):
            producer.produce(topic, b"a render request", key=b"job", partition=0)
        producer.flush()
        # The GPU workers' group has answered everything before offset 2 of partition 0.
        group = Consumer({"bootstrap.servers": bootstrap, "group.id": "restyle-gpu",
                          "enable.auto.commit": False})
        group.commit(offsets=[TopicPartition(topic, 0, 2)], asynchronous=False)
        group.close()

        positions = QueuePositions(Settings(kafka_bootstrap=bootstrap))

        async def ask():
            try:
                return [await positions.ahead(QueueSpot(topic=topic, partition=0, offset=n))
                        for n in (4, 2, 1)] + [
                    await positions.ahead(QueueSpot(topic=topic, partition=1, offset=0)),
                    await positions.ahead(QueueSpot(topic="elsewhere", partition=0, offset=0))]
            finally:
                await positions.close()

        # Two ahead; next; already taken (0); first on a partition the group has not
        # committed yet (it reads from the start); a topic no worker pool serves: unknown.
        assert asyncio.run(ask()) == [2, 0, 0, 0, None]
    finally:
        service.stop()


def test_a_page_is_answered_from_the_last_position_read_while_the_broker_is_slow_or_gone(
        tmp_path):
    """Positions are read again in the background: a status page never waits on the broker
    for one, but the very first time (under load, pages queued behind those reads)."""
    import time

    from confluent_kafka import Consumer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    from streams.api import queue

    service, bootstrap = start_tansu(tmp_path)
    topic = "restyle.render-requests"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result()
    group = Consumer({"bootstrap.servers": bootstrap, "group.id": "restyle-gpu",
                      "enable.auto.commit": False})
    group.commit(offsets=[TopicPartition(topic, 0, 3)], asynchronous=False)
    group.close()
    positions = QueuePositions(Settings(kafka_bootstrap=bootstrap))
    spot = QueueSpot(topic=topic, partition=0, offset=5)

    async def ask_before_and_after_the_broker_goes():
        try:
            first = await positions.ahead(spot)
            service.stop()  # every read from now on hangs until it times out
            await asyncio.sleep(queue.FRESH_FOR_S + 0.1)
            started = time.monotonic()

            async def asks():
                return [await positions.ahead(spot) for _ in range(50)]
            again = await asyncio.wait_for(asks(), 5)  # not the broker's request timeout
            return first, again, time.monotonic() - started
        finally:
            await asyncio.wait_for(positions.close(), 30)

    first, again, took_s = asyncio.run(ask_before_and_after_the_broker_goes())
    assert first == 2 and again == [2] * 50 and took_s < 0.5
