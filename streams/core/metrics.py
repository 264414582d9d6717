"""Prometheus metrics: per-stage latency and counts by outcome."""
from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from streams.core.heap import GcPauses

REGISTRY = CollectorRegistry()

STAGE_SECONDS = Histogram(
    "restyle_stage_seconds", "Time spent in each stage per message", ["stage"],
    registry=REGISTRY, buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
                                120, 300),
)
STAGE_WAIT_SECONDS = Histogram(
    "restyle_stage_wait_seconds", "Time a message waited on a stage's topic (sent to picked up; "
    "across machines this includes clock skew)", ["stage"], registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
STAGE_OUTCOMES = Counter(
    "restyle_stage_messages_total", "Messages handled per stage by outcome", ["stage", "outcome"],
    registry=REGISTRY,
)
JOBS_FINISHED = Counter(
    "restyle_jobs_finished_total", "Jobs that reached a terminal state", ["status", "code"],
    registry=REGISTRY,
)
DEAD_LETTERS = Counter(
    "restyle_dead_letters_total", "Messages sent to the dead-letter topic", ["topic", "code"],
    registry=REGISTRY,
)
BUCKET_EVENTS = Counter(
    "restyle_bucket_objects_total", "Bucket notification records by what became of them "
    "(submitted, unmatched, own_output, ignored, failed)", ["outcome"], registry=REGISTRY,
)

# The GPU worker's duty cycle is busy / holding (see gpu_agent/duty.py).
GPU_BUSY_SECONDS = Counter(
    "restyle_gpu_model_seconds", "Time inside the diffusion model call", registry=REGISTRY)
GPU_HOLDING_SECONDS = Counter(
    "restyle_gpu_holding_seconds", "Time the GPU worker held at least one render request",
    registry=REGISTRY)
GPU_IN_FLIGHT = Gauge(
    "restyle_gpu_requests_in_flight", "Render requests received and not yet answered",
    registry=REGISTRY)

# What each worker pool has not processed yet (streams/core/lag.py), from the CPU workers.
CONSUMER_LAG = Gauge(
    "restyle_consumer_lag", "Records published and not yet processed (end offset minus the "
    "group's committed offset)", ["group", "topic", "partition"], registry=REGISTRY)
GPU_QUEUE_DEPTH = Gauge(
    "restyle_gpu_queue_depth", "Render requests waiting for the GPU pool, per request topic",
    ["topic"], registry=REGISTRY)
# How long a job took from accepted to done, failed or cancelled (the tracker).
JOB_SECONDS = Histogram(
    "restyle_job_seconds", "Time from a job's acceptance to its end", ["pipeline", "status"],
    registry=REGISTRY, buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800,
                                3600, 14400))
# GPU memory per device, when the worker has a CUDA device (gpu_agent).
GPU_MEMORY_BYTES = Gauge(
    "restyle_gpu_memory_bytes", "CUDA memory held by PyTorch: allocated to tensors, or "
    "reserved by its caching allocator", ["device", "kind"], registry=REGISTRY)

# How late the worker's event loop wakes a task that slept (a probe every
# LOOP_LAG_PROBE_S): everything the loop serves (the status API, SSE streams, heartbeats,
# consuming) waits at least this long.
EVENT_LOOP_LAG_SECONDS = Histogram(
    "restyle_event_loop_lag_seconds", "How late the event loop woke a sleeping probe",
    registry=REGISTRY, buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                2.5, 5))
LOOP_LAG_PROBE_S = 0.25

# Python's cycle collector: its runs and pauses (a worker installs it, streams/core/heap.py).
GC_PAUSES = GcPauses()
REGISTRY.register(GC_PAUSES)


async def watch_event_loop_lag() -> None:
    """Observe the event loop's lag for as long as the worker runs."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + LOOP_LAG_PROBE_S
        await asyncio.sleep(LOOP_LAG_PROBE_S)
        EVENT_LOOP_LAG_SECONDS.observe(max(0.0, loop.time() - due))


def render_metrics() -> bytes:
    return generate_latest(REGISTRY)
