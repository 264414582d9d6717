"""A faust consumer whose fetch long-poll time is configurable.

faust 0.15 hard-codes aiokafka's `fetch_max_wait_ms` to 1500 ms. A broker that does not answer a
long-poll fetch as soon as data arrives (the embedded Tansu broker) then adds up to that much
latency to every hop between stages. restyle sets it from `RESTYLE_FETCH_MAX_WAIT_MS`.
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


def use_fetch_max_wait(milliseconds: int) -> None:
    """Install the consumer for every faust app in this process (one worker = one process)."""
    global _fetch_max_wait_ms
    _fetch_max_wait_ms = milliseconds
    faust_aiokafka.Transport.Consumer = _Consumer
