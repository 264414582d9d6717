"""A held-back message the broker's retention deleted is looked up where the log now starts.

restyle's consumer fetches a skipped message again from its offset (streams/core/consumer.py);
if retention deleted it, the seek goes to the partition's first offset instead, and the commit
moves past the deleted range. Here the broker is real and the deletion is Kafka's own
DeleteRecords, what retention does to a log's start.
"""
from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic, RecordsToDelete
from aiokafka.errors import KafkaConnectionError, UnsupportedVersionError

from streams.core.consumer import seek_in_consumer_thread


async def seek_past_deleted_records(bootstrap: str) -> tuple[int | None, int]:
    """Five records, the first three deleted; a seek asked for offset 1. Returns (the offset
    sought, the offset of the first record fetched then)."""
    topic = f"log-start-{uuid.uuid4().hex[:8]}"
    tp = TopicPartition(topic, 0)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        await admin.create_topics([NewTopic(topic, 1, 1)])
        await producer.start()
        for n in range(5):
            await producer.send_and_wait(topic, f"record {n}".encode(), partition=0)
        try:
            await admin.delete_records({tp: RecordsToDelete(before_offset=3)})
        except (KafkaConnectionError, UnsupportedVersionError) as refused:  # Tansu hangs up
            pytest.skip(f"this broker does not delete records on request: {refused!r}")
        await consumer.start()
        consumer.assign([tp])
        sought = await seek_in_consumer_thread(consumer, tp, 1, generation=0)
        first = await asyncio.wait_for(consumer.getone(), 30)
        return sought, first.offset
    finally:
        await consumer.stop()
        await producer.stop()
        await admin.close()


def test_a_seek_to_a_deleted_offset_goes_to_where_the_log_now_starts(e2e):
    sought, first_fetched = asyncio.run(
        seek_past_deleted_records(e2e.stack.endpoints["kafka_bootstrap"]))
    assert sought == 3 and first_fetched == 3
