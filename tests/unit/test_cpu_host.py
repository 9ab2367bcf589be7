"""The small-CPU-host engine environment (app/engine/cpu_host.py)."""

from __future__ import annotations

import pytest

from app.engine.cpu_host import IDLE_WAIT_ENV, apply_small_host_policy, small_host_env, usable_cpus


@pytest.mark.parametrize(("cpus", "threads"), [(1, "1"), (2, "1"), (3, "2"), (4, "3")])
def test_small_hosts_leave_one_core_to_the_http_side(cpus, threads):
    env = small_host_env(cpus)
    assert env == {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": threads, IDLE_WAIT_ENV: "50"}


@pytest.mark.parametrize("cpus", [5, 8, 64])
def test_larger_hosts_keep_vllm_defaults(cpus):
    assert small_host_env(cpus) == {}


def test_operator_settings_win():
    environ = {"OMP_NUM_THREADS": "2", "PATH": "/bin"}
    applied = apply_small_host_policy(environ, cpus=2)
    assert applied == {"VLLM_CPU_OMP_THREADS_BIND": "nobind", IDLE_WAIT_ENV: "50"}
    assert environ["OMP_NUM_THREADS"] == "2" and environ[IDLE_WAIT_ENV] == "50"
    assert apply_small_host_policy(environ, cpus=2) == {}  # idempotent


def test_usable_cpus_is_the_affinity_mask():
    import os

    assert 1 <= usable_cpus() <= (os.cpu_count() or 1)
