"""The response headers LoRAX sets, with values measured on this request.

Source: LoRAX ``router/src/server.rs`` (non-stream ``generate``: ``x-compute-*``, ``x-*-time``,
``x-*-tokens``, ``x-model-id``, ``x-adapter-*``; streams: a subset) at a7394ba3
(shared/reference/lorax-api.md §2.8). Times are integer milliseconds, as LoRAX writes them.
"""

from __future__ import annotations

import time
from urllib.parse import quote

from app.engine.base import ModelInfo
from app.pipeline import GenerationStream
from app.types import GenerationResult


def _ms(seconds: float) -> str:
    return str(max(0, int(seconds * 1000)))


def _compute_type(info: ModelInfo) -> str:
    return "gpu+optimized" if info.device == "cuda" else info.device


def _header_value(value: str) -> str:
    """HTTP header values are Latin-1: percent-encode anything else (names are user input)."""
    return quote(value, safe=" !#$&'()*+,/:;=?@[]~%^`{|}<>\"") if not value.isascii() or not value.isprintable() else value


def _adapter_headers(adapter_id: str | None, adapter_source: str) -> dict[str, str]:
    # LoRAX sends these only when an adapter (not the base model) served the request.
    if not adapter_id:
        return {}
    return {"x-adapter-id": _header_value(adapter_id), "x-adapter-source": _header_value(adapter_source)}


def response_headers(
    info: ModelInfo,
    stream: GenerationStream,
    result: GenerationResult,
    *,
    generated: int,
    started: float,
    characters: int,
    adapter_label: str | None,
    adapter_source: str,
) -> dict[str, str]:
    """Headers of a finished non-streaming request. ``generated`` counts the tokens of the returned
    sequence (LoRAX counts only the best of ``best_of``); ``started`` is the handler's
    ``time.perf_counter()`` at receipt: the validation time runs from there to the moment the
    request was handed to the engine; the queue time is the engine's own measure.
    ``adapter_label`` is the adapter id, or the comma-joined ids of a merge (``None``: base model)."""
    now = time.perf_counter()
    t = stream.timings
    submitted = t.submitted or started
    queue = t.queue_time or 0.0
    scheduled = submitted + queue
    inference = max(0.0, now - scheduled)
    ttft = (t.first_token - scheduled) if t.first_token is not None else inference
    headers = {
        "x-compute-type": _compute_type(info),
        "x-compute-time": _ms(now - started),
        "x-compute-characters": str(characters),
        "x-total-time": _ms(now - started),
        "x-validation-time": _ms(submitted - started),
        "x-queue-time": _ms(queue),
        "x-inference-time": _ms(inference),
        "x-time-per-token": _ms(inference / generated) if generated else "0",
        "x-time-to-first-token": _ms(ttft),
        "x-time-per-output-token": _ms((inference - ttft) / max(generated - 1, 1)),
        "x-prompt-tokens": str(result.usage.prompt_tokens),
        "x-generated-tokens": str(generated),
        "x-skipped-tokens": "0",
        "x-total-tokens": str(result.usage.prompt_tokens + generated),
        "x-model-id": _header_value(info.name),
    }
    headers.update(_adapter_headers(adapter_label, adapter_source))
    return headers


def stream_headers(info: ModelInfo, characters: int, adapter_id: str | None, adapter_source: str) -> dict[str, str]:
    """Headers of a native stream (sent before any token exists)."""
    return {
        "x-compute-type": _compute_type(info),
        "x-compute-characters": str(characters),
        "x-model-id": _header_value(info.name),
        **_adapter_headers(adapter_id, adapter_source),
    }
