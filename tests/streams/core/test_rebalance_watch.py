"""A worker whose rebalance does not end stops, so its supervisor starts it again in the group
(faust never polls a worker that went past its poll interval back into its group)."""
from __future__ import annotations

from streams.core.rebalance_watch import stuck_for


def test_a_rebalance_is_timed_from_the_first_look_that_saw_it():
    assert stuck_for(False, None, 100.0) == (None, 0.0)
    assert stuck_for(True, None, 100.0) == (100.0, 0.0)
    assert stuck_for(True, 100.0, 130.5) == (100.0, 30.5)
    assert stuck_for(False, 100.0, 131.0) == (None, 0.0)  # it ended: the next one starts anew




def test_a_worker_marked_polled_is_not_idle_to_aiokafka():
    """aiokafka makes a consumer idle for its max poll interval leave its group (and rejoin
    only once fetched from); during a rebalance the worker marks itself polled instead."""
    import asyncio

    from aiokafka import AIOKafkaConsumer

    from streams.core.consumer import mark_fetch_activity

    async def idle_before_and_after() -> tuple[float, float]:
        consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:9")
        consumer._subscription._last_fetch_ended -= 100  # no fetch for 100 s
        before = consumer._subscription.fetcher_idle_time
        await mark_fetch_activity(consumer)
        return before, consumer._subscription.fetcher_idle_time

    before, after = asyncio.run(idle_before_and_after())
    assert before >= 100 and after < 1
