"""A bounded load test on loopback: hundreds of concurrent streams through both dialects and several
adapters, a share of clients leaving at random points. Afterwards the engine holds no request,
every completed stream was complete and well framed, the server's memory is back near its baseline,
and the metrics agree with what the clients saw. (A longer version: bench/load_test.py.)"""

from __future__ import annotations

import asyncio
import json
import random
import re

import httpx
import psutil
import pytest

pytestmark = pytest.mark.engine

STREAMS = 240
TOKENS = 64
LEAVE_SHARE = 0.2
MODELS = ["loragate-demo", "demo-lora-a", "demo-lora-b"]
MESSAGES = [{"role": "user", "content": "Tell me about the weather in the city."}]


def _metric(text: str, name: str) -> float:
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


async def _chat(http: httpx.AsyncClient, model: str, leave_after: int | None) -> dict:
    body = {"model": model, "messages": MESSAGES, "max_tokens": TOKENS, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    events: list[dict] = []
    done = False
    async with http.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if not line:
                continue
            assert line.startswith("data: "), line
            if line == "data: [DONE]":
                done = True
                continue
            assert not done, "data after [DONE]"
            events.append(json.loads(line[6:]))
            if leave_after is not None and len(events) >= leave_after:
                return {"left": True}
    content = [e for e in events if e["choices"] and e["choices"][0]["delta"].get("content")]
    usage = events[-1]["usage"]
    assert done and events[-1]["choices"] == []
    assert usage["completion_tokens"] == TOKENS
    assert 1 <= len(content) <= TOKENS
    assert [e["choices"][0]["finish_reason"] for e in events if e["choices"] and e["choices"][0]["finish_reason"]] == ["length"]
    return {"left": False, "tokens": usage["completion_tokens"]}


async def _native(http: httpx.AsyncClient, adapter: str | None, leave_after: int | None) -> dict:
    body = {"inputs": "The weather in the city is",
            "parameters": {"max_new_tokens": TOKENS, "ignore_eos_token": True, "details": True, "adapter_id": adapter}}
    events: list[dict] = []
    async with http.stream("POST", "/generate_stream", json=body) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if not line:
                continue
            assert line.startswith("data:{"), line
            events.append(json.loads(line[5:]))
            if leave_after is not None and len(events) >= leave_after:
                return {"left": True}
    assert len(events) == TOKENS and all("token" in e for e in events)
    assert all(e["generated_text"] is None for e in events[:-1])
    assert events[-1]["details"]["generated_tokens"] == TOKENS
    return {"left": False, "tokens": TOKENS}


async def _load(base_url: str, seed: int) -> list[dict]:
    rng = random.Random(seed)
    limits = httpx.Limits(max_connections=STREAMS, max_keepalive_connections=STREAMS)
    async with httpx.AsyncClient(base_url=base_url, timeout=300, limits=limits) as http:
        jobs = []
        for i in range(STREAMS):
            leave = rng.randint(1, 8) if rng.random() < LEAVE_SHARE else None
            model = MODELS[i % len(MODELS)]
            if i % 2:
                jobs.append(_chat(http, model, leave))
            else:
                jobs.append(_native(http, None if model == "loragate-demo" else model, leave))
        return await asyncio.gather(*jobs)


def test_hundreds_of_streams_with_random_disconnects(live_server):
    url = live_server.base_url
    server = psutil.Process(int(_server_pid(url)))
    asyncio.run(_load(url, seed=1))  # warm-up round: pools, caches, first-use allocations
    baseline = server.memory_info().rss
    before = httpx.get(url + "/metrics").text
    results = asyncio.run(_load(url, seed=2))
    after = httpx.get(url + "/metrics").text
    completed = [r for r in results if not r["left"]]
    left = len(results) - len(completed)
    assert left > 0 and completed
    assert _metric(after, "loragate_engine_unfinished_requests") == 0  # nothing generates for nobody
    # The metrics agree with what the clients saw. A client that leaves after the server has
    # written its last event is, for the server, a finished stream: every stream is either one.
    delta = {name: _metric(after, name) - _metric(before, name) for name in (
        "loragate_generation_tokens_total", "loragate_client_disconnects_total", "loragate_requests_finished_total")}
    finished, disconnects = delta["loragate_requests_finished_total"], delta["loragate_client_disconnects_total"]
    assert finished + disconnects == STREAMS
    assert 0 < disconnects <= left and finished >= len(completed)
    late_leavers = finished - len(completed)  # they left after the server had finished their stream
    assert delta["loragate_generation_tokens_total"] == sum(r["tokens"] for r in completed) + late_leavers * TOKENS
    assert _metric(after, "loragate_requests_in_flight") == 0
    growth = server.memory_info().rss - baseline
    print(f"\nload: {STREAMS} streams x {TOKENS} tokens, {left} clients left early ({disconnects:.0f} before the "
          f"end), {len(completed)} complete; server RSS {baseline / 1024**2:.0f} MiB -> "
          f"{server.memory_info().rss / 1024**2:.0f} MiB")
    assert growth < 64 * 1024**2, f"server memory grew by {growth / 1024**2:.0f} MiB over one load round"


def _server_pid(url: str) -> int:
    port = int(url.rsplit(":", 1)[1])
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port:
            return conn.pid
    raise AssertionError("no process listens on the server's port")
