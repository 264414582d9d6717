"""The worker's heap after its models are loaded, and what garbage collection costs it.

A CPU worker's libraries and models are hundreds of thousands of Python objects (measured:
543,000 with the tiny test models; real ones have the same modules, so about as many). A full
collection of the cycle collector walks every one of them: 0.9-1.0 s on this project's
two-core machine, during which the worker's event loop (the status API, event streams,
heartbeats, consuming) stands still. Python runs one whenever enough objects have survived
since the last, so it lands, now and then, in the middle of a status request.

Those objects live as long as the process. Once they are loaded, `settle` moves them out of the
collector's sight (gc.freeze, after a collection so that no start-up garbage is kept for ever);
collections then walk only what came after (measured: the same full collection, 0.0 ms).

The same goes for the S3 client a CPU worker makes (botocore's model of the S3 service, about
40,000 objects): made at start and settled (streams/worker.py), not by the first job. Made by
the first job, it was what every later full collection walked: 69,000 objects in 16.5 ms on an
idle worker, 36-141 ms under 300 status requests a second; settled, 10,000 in 2.2 ms (4.9 ms
under that load).

Only for what is never unloaded: a frozen object in a reference cycle is never freed, so a
GPU worker, whose pipelines an LRU may evict, does not freeze them. (A model first loaded
while jobs run also freezes what those jobs hold at that moment: a one-off per model role.)

`GcPauses` reports how long each collection stopped the process, per generation, on /metrics,
so that a tail latency that comes from the collector can be told from one that does not.
"""
from __future__ import annotations

import bisect
import gc
import itertools
import logging
import time

from prometheus_client.core import HistogramMetricFamily

log = logging.getLogger("restyle.heap")


def settle(what: str) -> None:
    """What is loaded now stays for the life of the process: collect once, then freeze."""
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    log.info("%s loaded: %d objects kept out of garbage collection (settled in %.0f ms)",
             what, gc.get_freeze_count(), (time.perf_counter() - started) * 1000)


class GcPauses:
    """Times the cycle collector's runs (gc.callbacks) and reports them as a Prometheus
    histogram per generation. The callback only adds numbers: it runs inside any allocation,
    so it must not take a lock (a metric's own could be held by the very code it
    interrupted)."""

    BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

    def __init__(self):
        # per generation: runs per bucket (the last: above every bound), and their seconds
        self.runs = [[0] * (len(self.BUCKETS) + 1) for _ in range(3)]
        self.seconds = [0.0, 0.0, 0.0]
        self._started = 0.0

    def install(self) -> "GcPauses":
        if self._on_gc not in gc.callbacks:
            gc.callbacks.append(self._on_gc)
        return self

    def uninstall(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        generation, took = info["generation"], time.perf_counter() - self._started
        self.runs[generation][bisect.bisect_left(self.BUCKETS, took)] += 1
        self.seconds[generation] += took

    def collect(self):
        paused = HistogramMetricFamily(
            "restyle_gc_pause_seconds", "How long each run of Python's cycle collector stopped "
            "the process (its event loop included), per generation", labels=["generation"])
        for generation in range(3):
            cumulative = list(itertools.accumulate(self.runs[generation]))
            buckets = [(repr(bound), count) for bound, count in zip(self.BUCKETS, cumulative)]
            paused.add_metric([str(generation)], buckets + [("+Inf", cumulative[-1])],
                              sum_value=self.seconds[generation])
        return [paused]
