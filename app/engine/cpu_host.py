"""How vLLM's processes share a small CPU-only host: the environment loragate sets before the engine
starts, when the operator has not set it.

On a CPU host, vLLM 0.32 runs three busy processes besides the HTTP clients: the API server (this
process), the EngineCore (scheduler) and one model worker. On a host with few cores, two of vLLM's
defaults make them fight over the CPU (measured on a 2-core host, tiny Llama, 32 streams; see
``bench/results/serving.md``):

- **OpenMP threads.** With ``VLLM_CPU_OMP_THREADS_BIND=nobind`` (vLLM's ``auto`` binding pins the
  worker to one core and the scheduler to the other, and measured 4x slower still), the worker's
  torch runs one OpenMP thread per core. Every parallel region then waits for a thread that shares
  its core with the scheduler or the HTTP layer, and idle OpenMP threads spin. One thread fewer than
  the usable cores leaves a core for everything else: the engine alone goes from 6,800 to 12,200
  output tokens/s, vLLM's own server from 3,200 to 7,100.
- **Spin-waiting between scheduler and worker.** Each side of vLLM's shared-memory message queue
  (``vllm/distributed/device_communicators/shm_broadcast.py``, ``SpinCondition``) polls with
  ``sched_yield`` for a second after every message: under load, the scheduler and the worker each
  spend about half their CPU time polling. ``LORAGATE_ENGINE_IDLE_WAIT_US`` makes loragate's vLLM
  plugin (``app/engine/vllm_plugin.py``) sleep that many microseconds per poll instead: the
  scheduler's CPU use drops from 0.6 to 0.26 cores at the same throughput.

Each variable is set only when absent from the environment, so an operator's choice always wins.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

#: Hosts with at most this many usable CPUs get the small-host policy.
SMALL_HOST_CPUS = 4
#: The poll interval, in microseconds, that replaces busy-polling between scheduler and worker.
IDLE_WAIT_US = 50
IDLE_WAIT_ENV = "LORAGATE_ENGINE_IDLE_WAIT_US"


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, not the host's core count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def small_host_env(cpus: int) -> dict[str, str]:
    """The engine environment for a CPU-only host with ``cpus`` usable CPUs.

    Returns an empty dict for hosts with more than :data:`SMALL_HOST_CPUS` CPUs (vLLM's own
    ``auto`` binding reserves a core for the scheduler there), otherwise::

        {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": str(max(1, cpus - 1)),
         "LORAGATE_ENGINE_IDLE_WAIT_US": "50"}
    """
    if cpus > SMALL_HOST_CPUS:
        return {}
    return {
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",
        "OMP_NUM_THREADS": str(max(1, cpus - 1)),
        IDLE_WAIT_ENV: str(IDLE_WAIT_US),
    }


def apply_small_host_policy(environ: MutableMapping[str, str] | None = None, cpus: int | None = None) -> dict[str, str]:
    """Set :func:`small_host_env` in ``environ`` (default ``os.environ``) for every variable that
    is not already set; must run before torch or vLLM is imported, since OpenMP reads
    ``OMP_NUM_THREADS`` once. Returns the variables it set."""
    environ = os.environ if environ is None else environ
    applied = {k: v for k, v in small_host_env(usable_cpus() if cpus is None else cpus).items() if k not in environ}
    environ.update(applied)
    return applied
