"""A worker's models compute with one thread fewer than the CPUs it may use (its CPU limit in a
container, not every CPU of the node, which is what OpenMP would start), leaving a CPU to its
event loop and what runs beside it, unless OMP_NUM_THREADS says otherwise."""
from __future__ import annotations

import os

import pytest

from streams.cli.model_threads import (
    cpu_quota,
    model_threads,
    openmp_for_model_threads,
    threads_for_cpu_quota,
)


def cgroup_v2(tmp_path, cpu_max: str):
    (tmp_path / "cpu.max").write_text(cpu_max + "\n")
    return tmp_path


def cgroup_v1(tmp_path, quota: int, period: int):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text(f"{period}\n")
    return tmp_path


@pytest.mark.parametrize("cpu_max, threads", [
    ("200000 100000", 2),   # limits: cpu: 2
    ("150000 100000", 2),   # 1.5 CPUs: the half CPU still runs a thread
    ("50000 100000", 1),    # 500m
    ("max 100000", None),   # no limit
])
def test_the_thread_count_is_the_cgroup_v2_cpu_limit(tmp_path, cpu_max, threads):
    assert threads_for_cpu_quota(cpu_quota(cgroup_v2(tmp_path, cpu_max))) == threads


def test_cgroup_v1_quotas_count_too(tmp_path):
    assert threads_for_cpu_quota(cpu_quota(cgroup_v1(tmp_path, 300000, 100000))) == 3
    unlimited = tmp_path / "unlimited"
    unlimited.mkdir()
    assert cpu_quota(cgroup_v1(unlimited, -1, 100000)) is None


def test_no_cgroup_no_limit(tmp_path):
    assert cpu_quota(tmp_path) is None


@pytest.mark.parametrize("cpus, quota, threads", [
    (64, (200000, 100000), 1),   # limits: cpu: 2 on a 64-CPU node
    (64, (400000, 100000), 3),   # limits: cpu: 4
    (64, (50000, 100000), 1),    # 500m: never fewer than one
    (2, (400000, 100000), 1),    # a limit above the CPUs: the CPUs count
    (2, None, 1),                # this machine, no limit: the other CPU is the broker's
    (16, None, 15),
    (1, None, 1),
])
def test_the_models_get_every_usable_cpu_but_one(cpus, quota, threads):
    assert model_threads(cpus, quota) == threads


def test_a_worker_under_a_cpu_limit_sets_the_thread_count_before_torch_loads(tmp_path,
                                                                              monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("streams.cli.model_threads.usable_cpus", lambda: 64)
    openmp_for_model_threads(cgroup_v2(tmp_path, "400000 100000"))
    assert os.environ["OMP_NUM_THREADS"] == "3"
    assert os.environ["GOMP_SPINCOUNT"]


def test_the_environment_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    monkeypatch.setattr("streams.cli.model_threads.usable_cpus", lambda: 64)
    openmp_for_model_threads(cgroup_v2(tmp_path, "200000 100000"))
    assert os.environ["OMP_NUM_THREADS"] == "8"


def test_torch_computes_with_the_count_a_worker_sets():
    """In a fresh process, as a worker starts: the count reaches torch (it reads it once)."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    started = subprocess.run(
        [sys.executable, "-c", "from streams.cli.model_threads import *; "
         "openmp_for_model_threads(); import torch; "
         "print(torch.get_num_threads(), model_threads(usable_cpus(), cpu_quota()))"],
        env=env, capture_output=True, text=True, check=True)
    threads, wanted = map(int, started.stdout.split())
    assert threads == wanted
