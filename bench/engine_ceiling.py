"""The engine-only ceiling: the same workload as the serving benchmark, driven in-process on vLLM's
``AsyncLLMEngine`` with no HTTP at all — the physical limit any API server on top can approach.

    python bench/engine_ceiling.py MODEL_DIR --concurrency 1 8 32 128 [--adapter NAME=PATH ...] --out FILE.json

Workload: random 64-token prompts, 128 output tokens with ``ignore_eos``, ``num_prompts`` requests,
at most ``concurrency`` in flight. Metrics as ``vllm bench serve`` defines them: output tokens/s
over the run, TTFT, ITL per output (one sample per engine output after the first), e2e latency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
import uuid


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = (len(values) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


async def run(args: argparse.Namespace) -> list[dict]:
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest
    from vllm.sampling_params import RequestOutputKind, SamplingParams
    from vllm.v1.engine.async_llm import AsyncLLM

    engine_args = AsyncEngineArgs(
        model=args.model, served_model_name="loragate-demo", max_model_len=args.max_model_len,
        kv_cache_memory_bytes=args.kv_cache_bytes, enforce_eager=True, enable_lora=True,
        max_loras=4, max_lora_rank=8, disable_log_stats=False,
    )
    llm = AsyncLLM.from_engine_args(engine_args)
    loras = []
    for i, spec in enumerate(args.adapter):
        name, _, path = spec.partition("=")
        lora = LoRARequest(name, i + 1, path)
        await llm.add_lora(lora)
        loras.append(lora)
    vocab = llm.model_config.get_vocab_size()
    rng = random.Random(0)
    results = []
    try:
        for concurrency in args.concurrency:
            num_prompts = args.num_prompts or max(16, min(256, concurrency * 8))
            prompts = [[rng.randrange(10, vocab - 10) for _ in range(args.input_len)] for _ in range(num_prompts)]
            params = SamplingParams(max_tokens=args.output_len, ignore_eos=True, temperature=1.0,
                                    output_kind=RequestOutputKind.DELTA)
            ttfts: list[float] = []
            itls: list[float] = []
            e2es: list[float] = []
            tokens = 0
            gate = asyncio.Semaphore(concurrency)

            async def one(ids: list[int]) -> None:
                nonlocal tokens
                async with gate:
                    lora = rng.choice(loras) if loras else None
                    start = last = time.perf_counter()
                    first = True
                    async for out in llm.generate(TokensPrompt(prompt_token_ids=ids), params, uuid.uuid4().hex,
                                                  lora_request=lora):
                        n = sum(len(c.token_ids) for c in out.outputs)
                        if not n:
                            continue
                        now = time.perf_counter()
                        if first:
                            ttfts.append(now - start)
                            first = False
                        else:
                            itls.append(now - last)
                        last = now
                        tokens += n
                    e2es.append(last - start)

            began = time.perf_counter()
            await asyncio.gather(*(one(p) for p in prompts))
            duration = time.perf_counter() - began
            results.append({
                "concurrency": concurrency, "num_prompts": num_prompts, "adapters": len(loras),
                "output_throughput": tokens / duration,
                "median_ttft_ms": statistics.median(ttfts) * 1000, "p99_ttft_ms": _percentile(ttfts, 99) * 1000,
                "median_itl_ms": statistics.median(itls) * 1000, "p99_itl_ms": _percentile(itls, 99) * 1000,
                "median_e2el_ms": statistics.median(e2es) * 1000,
            })
            print(json.dumps(results[-1]), flush=True)
    finally:
        llm.shutdown()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[32])
    parser.add_argument("--num-prompts", type=int, default=None)
    parser.add_argument("--input-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--kv-cache-bytes", type=int, default=2 * 1024**3)
    parser.add_argument("--adapter", action="append", default=[], metavar="NAME=PATH")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    results = asyncio.run(run(args))
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
