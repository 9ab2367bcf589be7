"""The vLLM plugin: base-model tokens free of adapter weights in mixed LoRA batches, and engine queue\npolls that sleep instead of spinning on small CPU hosts."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
lora_ops = pytest.importorskip("vllm.lora.ops.torch_ops.lora_ops")


def test_base_model_tokens_get_no_lora_contribution():
    from app.engine.vllm_plugin import register
    from vllm.lora.punica_wrapper import punica_cpu

    register()
    register()  # idempotent
    torch.manual_seed(0)
    inputs = torch.randn(3, 16)
    lora_a = torch.randn(2, 1, 4, 16)  # 2 adapter slots, rank 4 (vLLM's stacked layout)
    indices = torch.tensor([-1, 0, 1])  # token 0 belongs to the base model
    out = torch.full((3, 4), 7.0)
    lora_ops.bgmv_shrink(inputs, lora_a, out, indices, 1.0)
    assert torch.all(out[0] == 0)  # unpatched vLLM gathers slot -1, i.e. the last adapter
    assert torch.allclose(out[1], lora_a[0, 0] @ inputs[1])
    assert torch.allclose(out[2], lora_a[1, 0] @ inputs[2])
    assert punica_cpu.bgmv_shrink is lora_ops.bgmv_shrink
    # the prefill path (sgmv) goes through the same function
    out2 = torch.full((3, 4), 7.0)
    lora_ops.sgmv_shrink(inputs, lora_a, out2, None, torch.tensor([1, 2]), torch.tensor([-1, 1]), 2, 2, 3, 1.0)
    assert torch.all(out2[0] == 0) and torch.allclose(out2[1], lora_a[1, 0] @ inputs[1])


_SPIN_PROBE = """
import os, sys, time
from app.engine.vllm_plugin import register
register()
from vllm.distributed.device_communicators import shm_broadcast as sb
yields = []
os.sched_yield = lambda: yields.append(1)  # what vLLM's busy window calls: a hot poll
reader = type("Reader", (), {})()
reader.is_reader, reader.last_read, reader.busy_loop_s = True, time.monotonic(), 60.0  # in the busy window
began = time.perf_counter()
sb.SpinCondition.wait(reader)
print(getattr(sb.SpinCondition.wait, "_loragate_idle_wait", False), len(yields), time.perf_counter() - began)
"""


@pytest.mark.parametrize("idle_wait_us", ["3000", None, "not-a-number"])
def test_engine_queue_polls_sleep_instead_of_spinning(idle_wait_us):
    """Fix 3: with LORAGATE_ENGINE_IDLE_WAIT_US set, a reader in vLLM's busy window sleeps that long
    instead of calling sched_yield; without it (or with a bad value) vLLM's polling is untouched."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "LORAGATE_ENGINE_IDLE_WAIT_US"}
    if idle_wait_us is not None:
        env["LORAGATE_ENGINE_IDLE_WAIT_US"] = idle_wait_us
    out = subprocess.run([sys.executable, "-c", _SPIN_PROBE], env=env, capture_output=True, text=True, timeout=120,
                         check=True).stdout.split()
    patched, yields, elapsed = out[-3] == "True", int(out[-2]), float(out[-1])
    if idle_wait_us == "3000":
        assert patched and yields == 0 and elapsed >= 0.0029
    else:
        assert not patched and yields == 1


def test_live_engine_runs_with_the_small_host_policy(live_server):
    """The server applied app/engine/cpu_host.py on this (small) host before starting the engine,
    whose processes inherit it (their /proc environ is unreadable: vLLM rewrites their titles)."""
    import os

    from app.engine.cpu_host import usable_cpus

    if usable_cpus() > 4 or {"OMP_NUM_THREADS", "LORAGATE_ENGINE_IDLE_WAIT_US"} & set(os.environ):
        pytest.skip("not a small host, or the policy is overridden in this environment")
    log = live_server.log_path.read_text(errors="replace")
    assert f"OMP_NUM_THREADS={max(1, usable_cpus() - 1)} LORAGATE_ENGINE_IDLE_WAIT_US=50" in log
    assert "OMP_NUM_THREADS=2 is set" not in log  # vLLM's warning about a multi-threaded engine
