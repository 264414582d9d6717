"""How many threads a worker's models compute with, decided before torch loads (libgomp, whose
threads PyTorch's CPU kernels use, reads its environment once, when it is loaded)."""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path

log = logging.getLogger("restyle.threads")

CGROUP = Path("/sys/fs/cgroup")


def openmp_for_model_threads(cgroup: Path = CGROUP) -> None:
    """A value set in the environment wins over each of these.

    Spin: a worker runs its models in threads (its event loop holds the main thread), and
    libgomp then lets its idle threads fall asleep almost at once, so every parallel region
    waits for them to wake. A tiny render took 174 ms from a thread against 99 ms from the main
    thread; a bounded spin made it 88 ms (OMP_WAIT_POLICY=ACTIVE, as fast, spins for ever while
    idle; PASSIVE: 212 ms).

    Threads: one fewer than the CPUs the worker may use (model_threads)."""
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")
    if "OMP_NUM_THREADS" not in os.environ:
        threads = model_threads(usable_cpus(), cpu_quota(cgroup))
        os.environ["OMP_NUM_THREADS"] = str(threads)
        log.info("model threads: %d (one CPU left to the event loop, the consumer and what "
                 "else runs beside; OMP_NUM_THREADS overrides)", threads)


def model_threads(cpus: int, quota: tuple[int, int] | None) -> int:
    """How many threads a worker's models compute with: the CPUs it may use, less one, and at
    least one.

    The CPUs it may use: the machine's, or fewer under a CPU quota. OpenMP starts one thread
    per CPU the process may run on, which in a container is every CPU of the node, not the
    container's limit: a pod limited to 2 CPUs on a 64-CPU node would run 64 threads in 2
    CPUs' time, and every parallel region would wait for the threads the quota has parked.

    Less one: a parallel region ends when its slowest thread does, and a model's threads are
    never alone: the worker's event loop (the status API, progress events), its consumer
    thread and, under `restyle up`, the broker and the other workers run beside them. With a
    thread on every CPU, each of those takes a model thread's CPU and holds the whole region
    back (under a quota, past the limit, the kernel stops every thread until the next period).
    Measured on two shared cores (bench/overhead.py, tiny models), two model threads against
    one: a makeover through Apache Kafka 443 against 382 ms, through Tansu 516 against 444 ms,
    its render in the GPU worker 213 against 162 ms."""
    limit = threads_for_cpu_quota(quota)
    usable = min(cpus, limit) if limit is not None else cpus
    return max(1, usable - 1)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity; taskset and cpusets narrow it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cpu_quota(cgroup: Path = CGROUP) -> tuple[int, int] | None:
    """(quota, period) in microseconds from cgroup v2 (cpu.max) or v1 (cpu.cfs_*), or None
    when the CPU time is not limited."""
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else (int(quota), int(period))
    except (OSError, ValueError):
        pass
    try:
        quota = int((cgroup / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((cgroup / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 else (quota, period)


def threads_for_cpu_quota(quota: tuple[int, int] | None) -> int | None:
    """The CPUs a quota allows, rounded up (1.5 CPUs: 2 threads), at least 1."""
    if quota is None or quota[1] <= 0:
        return None
    return max(1, math.ceil(quota[0] / quota[1]))
