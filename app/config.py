"""Server configuration: one immutable struct built by the CLI (or by tests) and read everywhere."""

from __future__ import annotations

import json
import re

import msgspec

_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgt]?)(i?)b?\s*$", re.IGNORECASE)


class LoRAModule(msgspec.Struct, frozen=True, kw_only=True):
    """An adapter to load at start-up: ``name`` clients use as ``model``, ``path`` to a PEFT
    LoRA directory, optional ``base_model_name`` (informational)."""

    name: str
    path: str
    base_model_name: str | None = None


def parse_lora_module(value: str) -> LoRAModule:
    """Parse one ``--lora-modules`` item, as ``vllm serve`` accepts it: ``NAME=PATH`` or a JSON
    object ``{"name": ..., "path": ..., "base_model_name": ...}``. Raises ``ValueError``."""
    value = value.strip()
    if value.startswith("{"):
        data = json.loads(value)
        if (not isinstance(data, dict) or not isinstance(data.get("name"), str) or not isinstance(data.get("path"), str)
                or not data["name"] or not data["path"]):
            raise ValueError(f"a JSON LoRA module needs string `name` and `path`: {value}")
        return LoRAModule(name=data["name"], path=data["path"], base_model_name=data.get("base_model_name"))
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise ValueError(f"expected NAME=PATH, got {value!r}")
    return LoRAModule(name=name, path=path)


def parse_size(value: str) -> int:
    """Parse a memory size such as ``1GiB``, ``512M``, ``2g`` or ``1073741824`` into bytes.
    Suffixes k, M, G, T (with or without ``i`` and ``B``) are powers of 1024, as for ``docker -m``.
    Raises ``ValueError``."""
    match = _SIZE_RE.match(value)
    if not match:
        raise ValueError(f"not a memory size: {value!r}")
    number, unit, _ = match.groups()
    try:
        return int(float(number) * 1024 ** " kmgt".index(unit.lower() or " "))
    except OverflowError as exc:
        raise ValueError(f"memory size too large: {value!r}") from exc


class ServerConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Everything ``loragate serve`` needs. Engine fields carry ``vllm serve``'s names and meanings.

    ``model`` is a local path or a Hugging Face id (``None``: the built-in demo model).
    ``adapter_roots`` are the directories ``local`` adapters may be loaded from; ``adapter_source``
    is where adapter ids that requests name are loaded from by default (``hub``, ``local``, ``s3``);
    ``max_cpu_loras`` (default ``max_loras``) bounds the adapters kept ready.
    ``api_keys``: bearer keys required on every route but ``open_paths`` (none: open server).
    Limits: ``max_concurrent_requests`` (beyond: 429), ``max_request_body_bytes`` (beyond: 413),
    ``max_n`` (choices or ``best_of`` per request), ``max_stop_sequences``, ``max_output_tokens``
    (generated tokens per request; ``None``: up to the context). ``cors_allow_origins``:
    CORS is off unless origins are given.
    ``kv_cache_memory_bytes`` sizes the KV cache explicitly (bytes; ``None``: on CPU a safe default
    is chosen, on GPU ``gpu_memory_utilization`` decides). ``engine`` is ``"vllm"`` (the product)
    or ``"synthetic"`` (benchmarks of the server's own overhead only)."""

    model: str | None = None
    served_model_name: str | None = None
    host: str = "0.0.0.0"
    port: int = 8000
    dtype: str = "auto"
    max_model_len: int | None = None
    lora_modules: tuple[LoRAModule, ...] = ()
    enable_lora: bool | None = None
    adapter_roots: tuple[str, ...] = ()
    adapter_source: str = "hub"
    adapter_cache_dir: str | None = None
    s3_endpoint_url: str | None = None
    max_loras: int = 4
    max_lora_rank: int = 16
    max_cpu_loras: int | None = None
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float | None = None
    kv_cache_memory_bytes: int | None = None
    enforce_eager: bool = False
    max_num_seqs: int | None = None
    max_logprobs: int = 20
    json_any_whitespace: bool = False
    seed: int = 0
    engine: str = "vllm"
    synthetic_token_interval: float = 0.0
    log_level: str = "info"
    access_log: bool = False
    graceful_shutdown_timeout: float = 30.0
    api_keys: tuple[str, ...] = ()
    open_paths: tuple[str, ...] = ("/health", "/ping", "/ready", "/metrics")
    max_concurrent_requests: int = 1024
    max_request_body_bytes: int = 8 * 1024 * 1024
    max_n: int = 16
    max_output_tokens: int | None = None
    max_stop_sequences: int = 4
    cors_allow_origins: tuple[str, ...] = ()
