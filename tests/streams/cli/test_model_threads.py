"""A worker in a container computes with as many threads as its CPU limit allows, not one per
CPU of the node (what OpenMP would start), unless OMP_NUM_THREADS says otherwise."""
from __future__ import annotations

import os

import pytest

from streams.cli.model_threads import cpu_quota, openmp_for_model_threads, threads_for_cpu_quota


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


def test_a_worker_under_a_cpu_limit_starts_that_many_threads(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 64)
    openmp_for_model_threads(cgroup_v2(tmp_path, "200000 100000"))
    assert os.environ["OMP_NUM_THREADS"] == "2"
    assert os.environ["GOMP_SPINCOUNT"]


def test_the_environment_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    monkeypatch.setattr("os.cpu_count", lambda: 64)
    openmp_for_model_threads(cgroup_v2(tmp_path, "200000 100000"))
    assert os.environ["OMP_NUM_THREADS"] == "8"


def test_a_limit_above_the_cpus_changes_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    openmp_for_model_threads(cgroup_v2(tmp_path, "400000 100000"))
    assert "OMP_NUM_THREADS" not in os.environ
