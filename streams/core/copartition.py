"""Whether a stage that owns a table may be called in-process from another stage (chaining
across a table's boundary): only where the table's write lands where its own topic would have
put the event.

faust writes a table to the partition number of the event in hand (its changelog and its local
store alike). A stage that owns a table (the tracker) normally reads its own topic, keyed by
job id, so each job's state sits in the partition of its key. Called in-process from a stage
whose message sits on a topic with the same partition count and the same key (the upload of a
job keyed by its id, the reanalysis of a job), the write lands in the same partition, and
faust's assignor gives co-partitioned topics' partitions of one number to one worker, so that
worker owns the table's partition too. Anything else (an upload keyed otherwise, or by a
producer whose partitioner is not murmur2, topics of different partition counts, a partition
this worker does not hold) takes the topic, as without chaining."""
from __future__ import annotations

import faust
from aiokafka.partitioner import murmur2


def key_partition(key: bytes, partitions: int) -> int:
    """The partition a keyed record goes to: murmur2, as Java clients, aiokafka and faust
    place it (librdkafka's `murmur2_random`)."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def lands_in_hand(consumer, topic: str, key: str, in_hand: int | None) -> bool:
    """Whether key's partition of topic is in_hand (the partition number of the message being
    handled) and this worker's consumer holds it (consumer: faust's)."""
    partitions = consumer.topic_partitions(topic)
    if in_hand is None or not partitions:
        return False
    partition = key_partition(key.encode(), partitions)
    # (faust's TP and aiokafka's TopicPartition are (topic, partition) named tuples)
    return partition == in_hand and (topic, partition) in consumer.assignment()


def current_message():
    """The message of the event being handled (faust's), or None outside one."""
    handled = faust.current_event()
    return handled.message if handled is not None else None
