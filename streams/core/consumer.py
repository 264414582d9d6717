"""restyle's faust consumer: a configurable fetch long-poll, and no commit past a message
that was never processed.

faust 0.15 hard-codes aiokafka's `fetch_max_wait_ms` to 1500 ms. A broker that does not answer a
long-poll fetch as soon as data arrives (the embedded Tansu broker) then adds up to that much
latency to every hop between stages. restyle sets it from `RESTYLE_FETCH_MAX_WAIT_MS`.

After a rebalance, faust's stream skips the messages it fetched in the previous generation
(they are fetched again) but still acknowledges them, and the rebalance has just forgotten the
partition's committed offset, so nothing stops that acknowledgement from counting: a skipped
message at offset 7, with 3..6 not yet fetched again, commits 8. If the next rebalance of a
storm moves the partition, its new owner starts at 8 and 3..7 are never processed. The
fault bench lost a catalog product this way (Apache Kafka, a worker that rejoined three times
in 13 s). Here an acknowledgement from an earlier generation counts for nothing: the message
comes again in the current generation, and only that copy moves the commit.
"""
from __future__ import annotations

from faust.transport.drivers import aiokafka as faust_aiokafka

_fetch_max_wait_ms = 1500


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport):
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = _fetch_max_wait_ms  # read by aiokafka's fetcher at start
        return consumer


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self):
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def ack(self, message) -> bool:
        fetched_in = getattr(message, "generation_id", None)
        if fetched_in is not None and fetched_in != self.app.consumer_generation_id:
            message.acked = True  # done with, as far as its stream is concerned
            return False  # but not committed: the current generation delivers it again
        return super().ack(message)


def use_fetch_max_wait(milliseconds: int) -> None:
    """Install the consumer for every faust app in this process (one worker = one process)."""
    global _fetch_max_wait_ms
    _fetch_max_wait_ms = milliseconds
    faust_aiokafka.Transport.Consumer = _Consumer
