"""A consumer whose assignment callback outlasts its session timeout (and its max poll
interval) stays in its group (streams/core/heartbeats.py): what faust's callback does on a busy
machine, opening a RocksDB store per table partition. On a real broker, with aiokafka's own
consumer."""
from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.consumer.group_coordinator import GroupCoordinator

from streams.core.heartbeats import heartbeat_through_assignment
from tests.conftest import production_broker, start_broker

SESSION_TIMEOUT_MS = 6000  # restyle's default, and the broker's least
CALLBACK_S = 9.0  # past the session timeout, and past the max poll interval (8 s) too


@pytest.fixture(scope="module")
def bootstrap(tmp_path_factory):
    kind = production_broker()
    if kind not in ("apache-kafka", "external"):
        pytest.skip("needs a broker that expires members by their session timeout")
    address, stop, _ = start_broker(kind, tmp_path_factory.mktemp("heartbeats"))
    yield address
    stop()


class SlowToTakeUp(ConsumerRebalanceListener):
    def __init__(self):
        self.assignments = 0

    async def on_partitions_revoked(self, revoked):
        pass

    async def on_partitions_assigned(self, assigned):
        self.assignments += 1
        if self.assignments == 1:
            await asyncio.sleep(CALLBACK_S)  # the event loop runs: only the heartbeat waits


async def generations_after_a_slow_assignment(bootstrap: str) -> tuple[int, int]:
    """(times assigned, generations joined) over a slow first assignment and a few
    heartbeat intervals after it."""
    topic, group = f"hb-{uuid.uuid4().hex[:8]}", f"hb-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                                session_timeout_ms=SESSION_TIMEOUT_MS,
                                heartbeat_interval_ms=800, max_poll_interval_ms=8000)
    listener = SlowToTakeUp()
    consumer.subscribe([topic], listener=listener)
    await consumer.start()
    try:
        generations = set()
        loop = asyncio.get_running_loop()
        ends = loop.time() + CALLBACK_S + 6  # the slow callback, then a few heartbeats more
        while loop.time() < ends:
            generations.add(consumer._coordinator.generation)
            await consumer.getmany(timeout_ms=200)
        return listener.assignments, len(generations - {-1})
    finally:
        await consumer.stop()


def test_a_slow_assignment_callback_keeps_the_member_in_its_group(bootstrap):
    heartbeat_through_assignment()
    assert asyncio.run(generations_after_a_slow_assignment(bootstrap)) == (1, 1)


def test_without_it_the_broker_drops_the_member_and_it_joins_again(bootstrap, monkeypatch):
    """aiokafka's own behaviour, which the change above exists for."""
    patched = GroupCoordinator._on_join_complete
    monkeypatch.setattr(GroupCoordinator, "_on_join_complete",
                        getattr(patched, "__wrapped__", patched))
    assignments, generations = asyncio.run(generations_after_a_slow_assignment(bootstrap))
    assert assignments >= 2 and generations >= 2
