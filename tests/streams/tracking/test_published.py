"""When the tracker looks for a result a stopped tracker published: only for events written
before it took the partition, and not again after the results topic could not be read."""
from __future__ import annotations

import asyncio
import time

from streams.tracking.published import PublishedResults


def test_only_events_written_before_the_assignment_may_be_replays():
    now = [1000.0]
    published = PublishedResults({}, "restyle.results", clock_skew_s=60, clock=lambda: now[0])
    assert published.may_be_replayed(900.0)  # before this process took the partition
    assert published.may_be_replayed(1050.0)  # after, but within the hosts' clock skew
    assert not published.may_be_replayed(1061.0)
    now[0] = 2000.0
    published.forget()  # a rebalance: what came before it may be replayed again
    assert published.may_be_replayed(1061.0)


def test_a_results_topic_that_cannot_be_read_is_not_tried_again_until_the_next_assignment(
        caplog):
    # Nothing listens on port 9: the read fails.
    published = PublishedResults({"bootstrap_servers": "127.0.0.1:9"}, "restyle.results",
                                 clock_skew_s=60)
    said = "results are published without that check until the next rebalance"
    assert asyncio.run(published.contains(0, "job-1", 1.0, written_at=time.time())) is None
    assert caplog.text.count(said) == 1
    caplog.clear()
    assert asyncio.run(published.contains(1, "job-2", 1.0, written_at=time.time())) is None
    assert "127.0.0.1:9" not in caplog.text and said not in caplog.text  # not tried
    published.forget()
    assert asyncio.run(published.contains(1, "job-2", 1.0, written_at=time.time())) is None
    assert said in caplog.text  # tried again after a rebalance
