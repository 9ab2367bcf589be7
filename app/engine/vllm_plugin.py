"""A vLLM general plugin (entry point group ``vllm.general_plugins``) that fixes a LoRA bug of the
PyTorch-native punica ops vLLM 0.32 uses on CPU.

The bug: in a batch that mixes base-model and adapter requests, a base-model token has LoRA slot
index -1, and ``vllm/lora/ops/torch_ops/lora_ops.py:bgmv_shrink`` gathers ``lora_weights[-1]`` —
Python's negative indexing picks the *last* adapter slot. Whenever all ``max_loras`` slots are
occupied (e.g. 2 adapters with ``--max-loras 2``), base-model requests are silently served with the
last slot's adapter. Found by tests/engine (greedy base output changed under mixed batching).

The fix: after the shrink step, zero the rows of tokens that have no adapter. The expand step then
adds ``0 @ B = 0`` for them, which is what "no adapter" means. vLLM loads general plugins in every
process it starts (API server, EngineCore, workers), so the patch reaches the worker that runs
the model. It touches only vLLM's torch-native ops (the CPU path); GPU kernels are left alone.
"""

from __future__ import annotations

import functools
import logging

logger = logging.getLogger(__name__)
_applied = False


def _zero_rows_without_adapter(output_tensor, lora_indices_tensor) -> None:  # type: ignore[no-untyped-def]
    no_adapter = lora_indices_tensor < 0
    if bool(no_adapter.any()):
        output_tensor[: no_adapter.shape[0]][no_adapter] = 0


def register() -> None:
    """Patch ``bgmv_shrink`` where the CPU punica wrapper and the torch ``sgmv_*`` ops look it up.
    Idempotent; does nothing if vLLM's layout differs from 0.32's."""
    global _applied
    if _applied:
        return
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
    _applied = True
    logger.debug("loragate: patched vLLM torch bgmv_shrink for base-model tokens in mixed LoRA batches")
