"""Seeded requests whose prefill is chunked (a batch over the engine's token budget) used to kill
vLLM 0.32's CPU engine ("CPU Generator does not use offset"); the loragate vLLM plugin fixes it."""

from __future__ import annotations

import asyncio

import httpx
import pytest

pytestmark = pytest.mark.engine


def test_seeded_sampling_under_chunked_prefill_keeps_the_engine_alive(live_server):
    long_input = "The weather in the city is " * 60  # ~300+ tokens: 32 of them exceed one step's budget

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=live_server.base_url, timeout=300) as http:
            jobs = []
            for i in range(32):
                parameters = {"max_new_tokens": 8, "do_sample": True, "seed": 1000 + i, "details": True}
                jobs.append(http.post("/generate", json={"inputs": long_input, "parameters": parameters}))
            body = {"model": "demo-lora-a", "prompt": long_input, "max_tokens": 8, "seed": 7, "temperature": 1.0}
            jobs += [http.post("/v1/completions", json=body) for _ in range(8)]
            return await asyncio.gather(*jobs)

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * len(responses), [r.text[:200] for r in responses]
    assert all(r.json()["details"]["seed"] == 1000 + i for i, r in enumerate(responses[:32]))
    assert httpx.get(live_server.base_url + "/health").status_code == 200
    # the same seed alone still gives one answer
    body = {"inputs": "The weather", "parameters": {"max_new_tokens": 8, "do_sample": True, "seed": 5}}
    texts = {httpx.post(live_server.base_url + "/generate", json=body, timeout=60).json()["generated_text"]
             for _ in range(2)}
    assert len(texts) == 1
