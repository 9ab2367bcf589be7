"""``ServerConfig`` to vLLM ``AsyncEngineArgs``, with defaults that just work on a CPU machine.

vLLM on CPU reserves ``gpu_memory_utilization`` (0.92) of the machine's RAM unless the KV cache
size is given (shared/reference/vllm-engine.md §0.9). Unless the operator sizes it, loragate gives
the KV cache a tenth of the RAM, between 1 and 16 GiB.
"""

from __future__ import annotations

import os
from typing import Any

from app.config import ServerConfig

GiB = 1024**3


def is_cpu_platform() -> bool:
    """Whether vLLM runs on the CPU here (imports vLLM's platform detection)."""
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


def default_cpu_kv_cache_bytes() -> int:
    """A tenth of physical RAM, clamped to [1 GiB, 16 GiB]."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(min(max(total // 10, GiB), 16 * GiB))


def engine_args(config: ServerConfig, *, model: str, enable_lora: bool) -> Any:
    """Build ``AsyncEngineArgs`` for ``model`` (a path or Hugging Face id). Raises vLLM's own
    errors for invalid combinations (e.g. ``max_cpu_loras < max_loras``)."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    cpu = is_cpu_platform()
    kwargs: dict[str, Any] = {
        "model": model,
        "served_model_name": config.served_model_name or model,
        "dtype": config.dtype,
        "max_model_len": config.max_model_len,
        "tensor_parallel_size": config.tensor_parallel_size,
        "enforce_eager": config.enforce_eager,
        "max_logprobs": config.max_logprobs,
        "seed": config.seed,
        "enable_lora": enable_lora,
    }
    if enable_lora:
        kwargs.update(
            max_loras=config.max_loras,
            max_lora_rank=config.max_lora_rank,
            max_cpu_loras=config.max_cpu_loras or config.max_loras,
        )
    if not config.json_any_whitespace:
        # Compact JSON (engine-wide in vLLM 0.32; xgrammar honours no per-request flag): grammars that
        # allow any whitespace let small models emit spaces until max_tokens, a known failure mode.
        from vllm.config import StructuredOutputsConfig

        kwargs["structured_outputs_config"] = StructuredOutputsConfig(backend="xgrammar", disable_any_whitespace=True)
    if config.max_num_seqs is not None:
        kwargs["max_num_seqs"] = config.max_num_seqs
    if config.gpu_memory_utilization is not None:
        kwargs["gpu_memory_utilization"] = config.gpu_memory_utilization
    kv_bytes = config.kv_cache_memory_bytes
    if kv_bytes is None and cpu and not os.environ.get("VLLM_CPU_KVCACHE_SPACE") and config.gpu_memory_utilization is None:
        kv_bytes = default_cpu_kv_cache_bytes()
    if kv_bytes is not None:
        kwargs["kv_cache_memory_bytes"] = kv_bytes
    return AsyncEngineArgs(**kwargs)
