"""A tracker that lost its partition while it went on working (a "zombie": a pause longer than
the session timeout) cannot publish a result once the partition's next owner has looked for it.

Results go out in Kafka transactions, one transactional id per job-events partition
(RESTYLE_RESULT_TRANSACTIONS, streams/tracking/fencing.py). The broker is real and has
transactions: Apache Kafka only (Tansu has none).
"""
from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import ProducerFenced

from schemas import StageFailure
from streams.tracking.fencing import Fenced, TransactionalResults
from streams.tracking.published import PublishedResults, results_written_since
from tests.streams.tracking.test_published_e2e import result, results_topic
from tests.conftest import on_one_broker


@pytest.fixture
def kafka(e2e) -> str:
    """The bootstrap of the run's broker, when it has transactions."""
    if e2e.broker == "tansu":
        pytest.skip("Tansu has no transactions (RESTYLE_RESULT_TRANSACTIONS stays off there)")
    return e2e.stack.endpoints["kafka_bootstrap"]


class Tracker:
    """What one tracker process holds for the results topic: its transactional publisher and
    its read of what was published (committed results only), as streams/tracking/jobs.py
    builds them."""

    def __init__(self, bootstrap: str, topic: str, app_id: str):
        connection = {"bootstrap_servers": bootstrap}
        self.results = TransactionalResults(connection, topic, app_id, register_timeout_s=20)
        self.published = PublishedResults(connection, topic, clock_skew_s=60,
                                          before_read=self.results.ready,
                                          isolation_level="read_committed")

    async def publish(self, partition: int, job_id: str, finished_at: float) -> None:
        await self.results.publish(partition, job_id.encode(), result(job_id, finished_at), [])


def test_a_tracker_that_lost_its_partition_is_fenced_and_its_successor_publishes_once(kafka):
    """Tracker A publishes job 1's result, then pauses holding job 2's event; the group gives
    partition 0 to tracker B. B finds job 1's result and not job 2's, publishes job 2's; A
    wakes and tries to publish job 2's too: it is refused (Fenced), and so is all it tries
    on that partition afterwards, without taking the partition back from B. Readers see each
    result once."""
    now = time.time()

    async def scenario():
        topic = await results_topic(kafka, [])
        app_id = f"fencing-{uuid.uuid4().hex[:6]}"
        a, b = Tracker(kafka, topic, app_id), Tracker(kafka, topic, app_id)
        try:
            a.results.take([0])
            await a.publish(0, "job-1", now - 2)
            b.results.take([0])  # the rebalance A slept through
            found = [await b.published.contains(0, job, now - 2, written_at=now - 5)
                     for job in ("job-1", "job-2")]
            await b.publish(0, "job-2", now - 1)
            with pytest.raises(Fenced):
                await a.publish(0, "job-2", now - 1)
            # A's next events on the partition: refused at once; B is not fenced by them.
            with pytest.raises(Fenced):
                await a.publish(0, "job-4", now)
            with pytest.raises(Fenced):
                await a.results.ready(0)
            await b.publish(0, "job-5", now)
            # A's other partition is its own still.
            a.results.take([1])
            await a.publish(1, "job-3", now)
            written = [await results_written_since({"bootstrap_servers": kafka}, topic, p,
                                                   now - 60, "read_committed") for p in (0, 1)]
            return found, written
        finally:
            await a.results.close()
            await b.results.close()

    found, written = asyncio.run(scenario())
    assert found == [True, False]
    assert written == [{("job-1", now - 2), ("job-2", now - 1), ("job-5", now)},
                       {("job-3", now)}]


def test_an_owner_fenced_by_a_late_registration_takes_the_partition_back(kafka):
    """Tracker A, stopped while its registration of partition 0 was under way, registers it
    once it wakes, after B has taken the partition: B's next publish is refused. B is still
    in the generation it was fenced in once its reclaim time has passed (it heartbeats all
    along): it owns the partition, takes the id back, and publishes; A is refused."""
    now = time.time()

    async def scenario():
        topic = await results_topic(kafka, [])
        app_id = f"fencing-{uuid.uuid4().hex[:6]}"
        a, b = Tracker(kafka, topic, app_id), Tracker(kafka, topic, app_id)
        b.results.reclaim_after_s = 1.0
        try:
            b.results.take([0])
            await b.results.ready(0)
            a.results.take([0])  # the late registration
            await a.results.ready(0)
            with pytest.raises(Fenced):
                await b.publish(0, "job-1", now)
            with pytest.raises(Fenced):  # too soon to tell a zombie from an owner
                await b.publish(0, "job-1", now)
            await asyncio.sleep(1.0)
            await b.publish(0, "job-1", now)
            with pytest.raises(Fenced):
                await a.publish(0, "job-1", now)
            return await results_written_since({"bootstrap_servers": kafka}, topic, 0,
                                               now - 60, "read_committed")
        finally:
            await a.results.close()
            await b.results.close()

    assert asyncio.run(scenario()) == {("job-1", now)}


def test_a_result_left_in_an_open_transaction_is_aborted_when_the_partition_is_taken(kafka):
    """A's result was sent but its transaction not committed when A lost the partition: B's
    registration of the partition's transactional id aborts it, so B's read does not wait on
    it and does not count it; B publishes the one result; A's late commit is refused."""
    now = time.time()

    async def scenario():
        topic = await results_topic(kafka, [])
        app_id = f"fencing-{uuid.uuid4().hex[:6]}"
        zombie = AIOKafkaProducer(bootstrap_servers=kafka,
                                  transactional_id=f"{app_id}.results.0")
        await zombie.start()
        b = Tracker(kafka, topic, app_id)
        try:
            await zombie.begin_transaction()
            await (await zombie.send(topic, result("job-1", now - 1), key=b"job-1",
                                     partition=0))
            b.results.take([0])
            started = time.monotonic()
            found = await b.published.contains(0, "job-1", now - 1, written_at=now - 5)
            read_s = time.monotonic() - started
            await b.publish(0, "job-1", now - 1)
            with pytest.raises(ProducerFenced):
                await zombie.commit_transaction()
            committed = await results_written_since({"bootstrap_servers": kafka}, topic, 0,
                                                    now - 60, "read_committed")
            return found, read_s, committed
        finally:
            await zombie.stop()
            await b.results.close()

    found, read_s, committed = asyncio.run(scenario())
    assert found is False and read_s < 15
    assert committed == {("job-1", now - 1)}


def test_on_a_broker_without_transactions_a_publish_fails_and_names_the_setting(e2e):
    """RESTYLE_RESULT_TRANSACTIONS turned on against Tansu, which has no transactions: the
    result is not published, and the failure says why and which setting to turn off."""
    on_one_broker(e2e, "tansu", "the broker without transactions is Tansu")

    async def scenario():
        publisher = TransactionalResults(
            {"bootstrap_servers": e2e.stack.endpoints["kafka_bootstrap"]}, "restyle.results",
            f"fencing-{uuid.uuid4().hex[:6]}", register_timeout_s=5)
        publisher.take([0])
        started = time.monotonic()
        try:
            with pytest.raises(StageFailure) as failure:
                await publisher.publish(0, b"job-1", result("job-1", time.time()), [])
        finally:
            await publisher.close()
        return failure.value.error, time.monotonic() - started

    error, took = asyncio.run(scenario())
    assert error.code.value == "broker_unavailable" and took < 15
    assert "RESTYLE_RESULT_TRANSACTIONS" in error.message


def test_a_publish_that_fails_leaves_no_transaction_open_for_the_next(kafka):
    """A result the producer refuses (larger than a request may be) fails that publish with a
    broker code; its transaction is aborted, and the next result goes through."""
    now = time.time()

    async def scenario():
        topic = await results_topic(kafka, [])
        tracker = Tracker(kafka, topic, f"fencing-{uuid.uuid4().hex[:6]}")
        try:
            tracker.results.take([0])
            with pytest.raises(StageFailure) as failure:
                await tracker.results.publish(0, b"job-huge", b"x" * 2_000_000, [])
            await tracker.publish(0, "job-next", now)
            written = await results_written_since({"bootstrap_servers": kafka}, topic, 0,
                                                  now - 60, "read_committed")
        finally:
            await tracker.results.close()
        return failure.value.error, written

    error, written = asyncio.run(scenario())
    assert error.code.value == "broker_unavailable" and "publishing to" in error.message
    assert written == {("job-next", now)}
