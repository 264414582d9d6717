"""A tracker that replays an event finds the result a stopped tracker already published.

The results topic here is real (each broker of the run) and written as the tracker writes it:
keyed by job id, each record stamped with the time it was written.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams.tracking.published import PublishedResults, results_written_since


def result(job_id: str, finished_at: float) -> bytes:
    return json.dumps({"job_id": job_id, "status": "done", "finished_at": finished_at,
                       "schema_version": 1}).encode()


async def results_topic(bootstrap: str, records: list[tuple[str, float, float, int]]) -> str:
    """A new three-partition topic holding (job id, finished_at, written at, partition)
    results, and a record that is not one."""
    topic = f"results-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 3, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for job_id, finished_at, written_at, partition in records:
            await producer.send_and_wait(topic, result(job_id, finished_at),
                                         key=job_id.encode(), partition=partition,
                                         timestamp_ms=int(written_at * 1000))
        await producer.send_and_wait(topic, b"not a result", key=b"stray", partition=1)
    finally:
        await producer.stop()
    return topic


def test_results_written_since_a_time_are_found_and_older_ones_are_not(e2e):
    bootstrap = e2e.stack.endpoints["kafka_bootstrap"]
    now = time.time()

    async def scenario():
        topic = await results_topic(bootstrap, [
            ("job-an-hour-ago", now - 3600, now - 3600, 1),
            ("job-a-minute-ago", now - 61, now - 60, 1),
            ("job-just-now", now - 1, now, 2)])
        connection = {"bootstrap_servers": bootstrap}
        recent = [await results_written_since(connection, topic, p, now - 120)
                  for p in range(3)]
        tracker = PublishedResults(connection, topic, clock_skew_s=90)
        # The event that ended a job was written 30 s ago: results from 2 minutes ago on.
        found = [await tracker.contains(partition, job, finished, written_at=now - 30)
                 for partition, job, finished in [
                     (2, "job-just-now", now - 1),
                     (1, "job-a-minute-ago", now - 61),
                     (1, "job-an-hour-ago", now - 3600),
                     (2, "job-just-now", now - 2),  # not that job's ending
                     (0, "job-never-published", now - 5)]]
        # A job ended anew (its last stage ran again, the tracker chained to it): any of
        # its results counts.
        anew = [await tracker.contains(partition, job, None, written_at=now - 30)
                for partition, job in [(2, "job-just-now"), (1, "job-an-hour-ago"),
                                       (0, "job-never-published")]]
        return recent, found, anew

    recent, found, anew = asyncio.run(scenario())
    assert recent == [set(), {("job-a-minute-ago", now - 61)}, {("job-just-now", now - 1)}]
    assert found == [True, True, False, False, False]
    assert anew == [True, False, False]


def test_a_result_sent_without_an_acknowledgement_is_found_when_it_was_written(e2e):
    """The tracker's send of a result failed (no acknowledgement): it reads the partition
    afresh from just before the send, and counts the result as published only if it is
    there; a partition it cannot read either leaves the send's failure standing."""
    from streams.stack.embedded import free_port

    bootstrap = e2e.stack.endpoints["kafka_bootstrap"]
    now = time.time()

    async def scenario():
        topic = await results_topic(bootstrap, [])
        tracker = PublishedResults({"bootstrap_servers": bootstrap}, topic, clock_skew_s=5)
        # The partition was read before the send (the replay check): not there yet.
        assert await tracker.contains(0, "job-written", now - 1, written_at=now - 1) is False
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:  # the send whose acknowledgement the tracker never got
            await producer.send_and_wait(topic, result("job-written", now - 1),
                                         key=b"job-written", partition=0)
        finally:
            await producer.stop()
        found = [await tracker.written_after_all(0, job, finished, sent_at=now)
                 for job, finished in [("job-written", now - 1),
                                       ("job-written", now - 2),  # another ending of it
                                       ("job-not-written", now - 1)]]
        gone = PublishedResults({"bootstrap_servers": f"127.0.0.1:{free_port()}"}, topic,
                                clock_skew_s=5)
        started = time.monotonic()
        unreadable = await gone.written_after_all(0, "job-written", now - 1, sent_at=now)
        return found, unreadable, time.monotonic() - started

    found, unreadable, took = asyncio.run(scenario())
    assert found == [True, False, False]
    assert unreadable is False and took < 10
