"""A vLLM general plugin (entry point group ``vllm.general_plugins``) that fixes two bugs of vLLM 0.32
on CPU, both found by loragate's tests and benchmarks, and (3) stops the scheduler and the worker
spin-waiting on each other on small CPU hosts.

**1. Mixed LoRA batches.** A LoRA bug of the PyTorch-native punica ops vLLM 0.32 uses on CPU.

The bug: in a batch that mixes base-model and adapter requests, a base-model token has LoRA slot
index -1, and ``vllm/lora/ops/torch_ops/lora_ops.py:bgmv_shrink`` gathers ``lora_weights[-1]`` —
Python's negative indexing picks the *last* adapter slot. Whenever all ``max_loras`` slots are
occupied (e.g. 2 adapters with ``--max-loras 2``), base-model requests are silently served with the
last slot's adapter. Found by tests/engine (greedy base output changed under mixed batching).

The fix: after the shrink step, zero the rows of tokens that have no adapter. The expand step then
adds ``0 @ B = 0`` for them, which is what "no adapter" means. vLLM loads general plugins in every
process it starts (API server, EngineCore, workers), so the patch reaches the worker that runs
the model. It touches only vLLM's torch-native ops (the CPU path); GPU kernels are left alone.

**2. Seeded requests kill the engine under load.** When a request with its own ``seed`` has its
prefill split over several steps (chunked prefill: any batch over ``max_num_batched_tokens``), vLLM
discards the token sampled at the partial step and rewinds the request's generator with
``gen.set_offset(gen.get_offset() - 4)`` (``v1/worker/gpu_model_runner.py:_bookkeeping_sync``) — a
Philox (CUDA) API: a CPU ``torch.Generator`` raises "CPU Generator does not use offset", and the whole
engine dies. Found by bench/serving.py (LoRAX sampling always carries a seed). The fix swaps each
request's CPU generator, with its state, for a subclass whose offset calls are no-ops. The one cost:
on CPU a seeded request's random stream also advances at discarded partial-prefill samples, so a seed
reproduces its output under the same batching, not under any batching.

**3. Spin-waiting on small CPU hosts** (only when ``LORAGATE_ENGINE_IDLE_WAIT_US`` is set, which
``app/engine/cpu_host.py`` does on CPU hosts with at most 4 CPUs, and only on vLLM's CPU platform).
A reader of vLLM's shared-memory message queue (``SpinCondition.wait`` in
``vllm/distributed/device_communicators/shm_broadcast.py``) busy-polls with ``sched_yield`` for a
second after each message; the scheduler and the worker both read such queues, so under load each
burns about half its CPU polling, CPU the HTTP layer and the model need. The patch sleeps the given
number of microseconds per poll inside that busy window instead; outside it (idle engine) vLLM's
blocking wait is unchanged. Turning the busy window off instead (``busy_loop_s=0``) is not safe: the
queue's notifications are dropped under load (``SNDHWM=1``) and a reader then waits forever.
"""

from __future__ import annotations

import functools
import logging
import os
import time

logger = logging.getLogger(__name__)
_applied = False


def _zero_rows_without_adapter(output_tensor, lora_indices_tensor) -> None:  # type: ignore[no-untyped-def]
    no_adapter = lora_indices_tensor < 0
    if bool(no_adapter.any()):
        output_tensor[: no_adapter.shape[0]][no_adapter] = 0


def register() -> None:
    """Apply both fixes. Idempotent; each does nothing if vLLM's layout differs from 0.32's."""
    global _applied
    if _applied:
        return
    _applied = True
    _patch_lora_shrink()
    _patch_cpu_seeded_generators()
    _patch_spin_wait()


def _patch_lora_shrink() -> None:
    """Patch ``bgmv_shrink`` where the CPU punica wrapper and the torch ``sgmv_*`` ops look it up."""
    try:
        from vllm.lora.ops.torch_ops import lora_ops
        from vllm.lora.punica_wrapper import punica_cpu
    except Exception:  # pragma: no cover - another vLLM layout: nothing to patch
        return
    original = lora_ops.bgmv_shrink

    @functools.wraps(original)
    def bgmv_shrink(inputs, lora_b_weights, output_tensor, lora_indices_tensor, scaling=1.0):  # type: ignore[no-untyped-def]
        original(inputs, lora_b_weights, output_tensor, lora_indices_tensor, scaling)
        _zero_rows_without_adapter(output_tensor, lora_indices_tensor)

    lora_ops.bgmv_shrink = bgmv_shrink
    if getattr(punica_cpu, "bgmv_shrink", None) is original:
        punica_cpu.bgmv_shrink = bgmv_shrink
    logger.debug("loragate: patched vLLM torch bgmv_shrink for base-model tokens in mixed LoRA batches")


def _patch_cpu_seeded_generators() -> None:
    """After each ``_update_states``, give every new CPU per-request generator offset calls that
    do not raise (see the module docstring, fix 2)."""
    try:
        import torch
        from vllm.v1.worker import gpu_model_runner
    except Exception:  # pragma: no cover - another vLLM layout: nothing to patch
        return
    runner = gpu_model_runner.GPUModelRunner
    original = runner._update_states

    @functools.wraps(original)
    def _update_states(self, scheduler_output):  # type: ignore[no-untyped-def]
        result = original(self, scheduler_output)
        if torch.device(self.device).type == "cpu":
            swapped = {}
            for state in self.requests.values():
                gen = getattr(state, "generator", None)
                if gen is not None and type(gen) is torch.Generator:
                    new = cpu_generator_class()()
                    new.set_state(gen.get_state())
                    swapped[id(gen)] = new
                    state.generator = new
            if swapped:
                generators = self.input_batch.generators
                for index, gen in list(generators.items()):
                    if id(gen) in swapped:
                        generators[index] = swapped[id(gen)]
        return result

    runner._update_states = _update_states


def idle_wait_seconds() -> float:
    """The poll interval of fix 3 in seconds, from ``LORAGATE_ENGINE_IDLE_WAIT_US``; 0 = not set, or
    not a positive integer number of microseconds (then vLLM's busy-polling stays)."""
    from app.engine.cpu_host import IDLE_WAIT_ENV

    raw = os.environ.get(IDLE_WAIT_ENV, "")
    return int(raw) / 1e6 if raw.isdigit() and int(raw) > 0 else 0.0


def _patch_spin_wait() -> None:
    """Fix 3: poll vLLM's shared-memory queue with a short sleep instead of ``sched_yield``."""
    interval = idle_wait_seconds()
    if not interval:
        return
    try:
        from vllm.distributed.device_communicators import shm_broadcast
        from vllm.platforms import current_platform
    except Exception:  # pragma: no cover - another vLLM layout: nothing to patch
        return
    cls = getattr(shm_broadcast, "SpinCondition", None)
    if cls is None or not current_platform.is_cpu() or getattr(cls.wait, "_loragate_idle_wait", False):
        return
    original = cls.wait

    @functools.wraps(original)
    def wait(self, timeout_ms=None):  # type: ignore[no-untyped-def]
        if time.monotonic() <= self.last_read + self.busy_loop_s:
            time.sleep(interval)  # vLLM: os.sched_yield(), i.e. a hot poll
            return
        original(self, timeout_ms)

    wait._loragate_idle_wait = True  # type: ignore[attr-defined]
    cls.wait = wait
    logger.debug("loragate: vLLM shared-memory queue polls every %.0f us instead of spinning", interval * 1e6)


@functools.lru_cache(maxsize=1)
def cpu_generator_class():  # type: ignore[no-untyped-def]
    """The CPU ``torch.Generator`` subclass whose Philox-offset calls are no-ops (built on first use:
    importing this module must not import torch)."""
    import torch

    class CPUGenerator(torch.Generator):
        """A CPU generator that accepts vLLM's Philox-offset rewind as a no-op."""

        def get_offset(self) -> int:
            return 0

        def set_offset(self, offset: int) -> "CPUGenerator":
            return self

    return CPUGenerator
