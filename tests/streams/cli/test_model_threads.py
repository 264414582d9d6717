"""A worker's models compute with one thread fewer than the cores it may use (its CPU limit in a
container, not every core of the node, which is what PyTorch would start), leaving a core to
its event loop and what runs beside it, unless OMP_NUM_THREADS says otherwise."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from streams.cli.model_threads import (
    cpu_quota,
    cpus_for_quota,
    model_threads,
    openmp_for_model_threads,
    usable_cores,
)


def cgroup_v2(tmp_path, cpu_max: str):
    (tmp_path / "cpu.max").write_text(cpu_max + "\n")
    return tmp_path


def cgroup_v1(tmp_path, quota: int, period: int):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text(f"{period}\n")
    return tmp_path


@pytest.mark.parametrize("cpu_max, cpus", [
    ("200000 100000", 2),   # limits: cpu: 2
    ("150000 100000", 2),   # 1.5 CPUs: the half CPU still runs a thread
    ("50000 100000", 1),    # 500m
    ("max 100000", None),   # no limit
])
def test_the_cpus_a_cgroup_v2_limit_allows(tmp_path, cpu_max, cpus):
    assert cpus_for_quota(cpu_quota(cgroup_v2(tmp_path, cpu_max))) == cpus


def test_cgroup_v1_quotas_count_too(tmp_path):
    assert cpus_for_quota(cpu_quota(cgroup_v1(tmp_path, 300000, 100000))) == 3
    unlimited = tmp_path / "unlimited"
    unlimited.mkdir()
    assert cpu_quota(cgroup_v1(unlimited, -1, 100000)) is None


def test_no_cgroup_no_limit(tmp_path):
    assert cpu_quota(tmp_path) is None


@pytest.mark.parametrize("cores, quota, threads", [
    (64, (200000, 100000), 1),   # limits: cpu: 2 on a 64-core node
    (64, (400000, 100000), 3),   # limits: cpu: 4
    (64, (50000, 100000), 1),    # 500m: never fewer than one
    (2, (400000, 100000), 1),    # a limit above the cores: the cores count
    (2, None, 1),                # this machine, no limit: the other core is the broker's
    (16, None, 15),
    (1, None, 1),
])
def test_the_models_get_every_usable_core_but_one(cores, quota, threads):
    assert model_threads(cores, quota) == threads


def cpu_topology(root, cores_of_cpus: list[int]):
    """A /sys/devices/system/cpu with cpu<n> on core cores_of_cpus[n] of one package."""
    for cpu, core in enumerate(cores_of_cpus):
        topology = root / f"cpu{cpu}" / "topology"
        topology.mkdir(parents=True)
        (topology / "physical_package_id").write_text("0\n")
        (topology / "core_id").write_text(f"{core}\n")
    return root


def test_two_hyperthreads_of_a_core_count_once(tmp_path, monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert usable_cores(cpu_topology(tmp_path, [0, 0, 1, 1])) == 2  # 2 cores, 2 threads each


def test_only_the_cpus_the_process_may_run_on_count(tmp_path, monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {2, 3})  # taskset -c 2,3
    assert usable_cores(cpu_topology(tmp_path, [0, 1, 2, 3])) == 2


def test_a_cpu_without_a_topology_counts_as_a_core(tmp_path, monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2})
    assert usable_cores(tmp_path) == 3


def test_a_worker_under_a_cpu_limit_sets_the_thread_count_before_torch_loads(tmp_path,
                                                                              monkeypatch):
    monkeypatch.setattr("streams.cli.model_threads.usable_cores", lambda: 64)
    environ = {}
    openmp_for_model_threads(cgroup_v2(tmp_path, "400000 100000"), environ)
    assert environ["OMP_NUM_THREADS"] == "3"
    assert environ["GOMP_SPINCOUNT"]


def test_the_environment_wins(tmp_path, monkeypatch):
    monkeypatch.setattr("streams.cli.model_threads.usable_cores", lambda: 64)
    environ = {"OMP_NUM_THREADS": "8", "GOMP_SPINCOUNT": "0"}
    openmp_for_model_threads(cgroup_v2(tmp_path, "200000 100000"), environ)
    assert environ == {"OMP_NUM_THREADS": "8", "GOMP_SPINCOUNT": "0"}


def test_torch_computes_with_the_count_a_worker_sets():
    """In a fresh process, as a worker starts: the count reaches torch (it reads it once)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    started = subprocess.run(
        [sys.executable, "-c", "from streams.cli.model_threads import *; "
         "openmp_for_model_threads(); import torch; "
         "print(torch.get_num_threads(), model_threads(usable_cores(), cpu_quota()))"],
        env=env, capture_output=True, text=True, check=True)
    threads, wanted = map(int, started.stdout.split())
    assert threads == wanted
