"""How many threads a worker's models compute with, decided before torch loads (libgomp, whose
threads PyTorch's CPU kernels use, reads its environment once, when it is loaded)."""
from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def openmp_for_model_threads(cgroup: Path = CGROUP, environ=os.environ) -> None:
    """A value set in the environment wins over each of these.

    Spin: a worker runs its models in threads (its event loop holds the main thread), and
    libgomp then lets its idle threads fall asleep almost at once, so every parallel region
    waits for them to wake. A tiny render took 174 ms from a thread against 99 ms from the main
    thread; a bounded spin made it 88 ms (OMP_WAIT_POLICY=ACTIVE, as fast, spins for ever while
    idle; PASSIVE: 212 ms).

    Threads: model_threads (the worker logs the count once its logging is set up)."""
    environ.setdefault("GOMP_SPINCOUNT", "10000")
    if "OMP_NUM_THREADS" not in environ:
        environ["OMP_NUM_THREADS"] = str(model_threads(usable_cores(), cpu_quota(cgroup)))


def model_threads(cores: int, quota: tuple[int, int] | None) -> int:
    """How many threads a worker's models compute with: the cores it may use, less one, and
    at least one.

    The cores it may use: the physical cores of the CPUs it may run on (what PyTorch would
    start otherwise), or fewer under a CPU quota. In a container PyTorch counts every core
    of the node, not the container's limit: a pod limited to 2 CPUs on a 64-core node would
    run 64 threads in 2 CPUs' time, and every parallel region would wait for the threads the
    quota has parked.

    Less one: a parallel region ends when its slowest thread does, and a model's threads are
    never alone: the worker's event loop (the status API, progress events), its consumer
    thread and, under `restyle up`, the broker and the other workers run beside them. With a
    thread on every core, each of those takes a model thread's core and holds the whole
    region back (under a quota, past the limit, the kernel stops every thread until the next
    period). Measured in bench/overhead.py (bench/README.md, Model threads)."""
    limit = cpus_for_quota(quota)
    usable = min(cores, limit) if limit is not None else cores
    return max(1, usable - 1)


def usable_cores(cpu_root: Path = Path("/sys/devices/system/cpu")) -> int:
    """The physical cores among the CPUs this process may run on (its affinity: taskset and
    cpusets narrow it): two hyperthreads of one core count once, as PyTorch counts them."""
    try:
        cpus = os.sched_getaffinity(0)
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
    cores = set()
    for cpu in cpus:
        topology = cpu_root / f"cpu{cpu}" / "topology"
        try:
            cores.add(((topology / "physical_package_id").read_text().strip(),
                       (topology / "core_id").read_text().strip()))
        except OSError:  # no topology to read (some containers): each CPU a core
            cores.add(("cpu", str(cpu)))
    return max(1, len(cores))


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


def cpus_for_quota(quota: tuple[int, int] | None) -> int | None:
    """The CPUs a quota allows, rounded up (1.5 CPUs: 2), at least 1."""
    if quota is None or quota[1] <= 0:
        return None
    return max(1, math.ceil(quota[0] / quota[1]))
