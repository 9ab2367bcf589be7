"""API keys, limits and CORS, in each dialect's own error shape."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest
from litestar.testing import AsyncTestClient

from app.engine.synthetic import SyntheticEngine
from tests.unit.conftest import BASE, make_app, serve

CHAT = {"model": BASE, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
NATIVE = {"inputs": "hi", "parameters": {"max_new_tokens": 3}}


def engine(**kwargs) -> SyntheticEngine:
    return SyntheticEngine(name=BASE, max_model_len=512, **kwargs)


async def test_without_keys_the_server_is_open():
    async with AsyncTestClient(make_app(engine())) as client:
        assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200


async def test_api_keys_are_required_except_on_open_paths(monkeypatch):
    monkeypatch.setenv("LORAGATE_API_KEYS", "env-key, other-env-key")
    async with AsyncTestClient(make_app(engine(), api_keys=("cli-key",))) as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic cli-key"},
                        {"Authorization": "Bearer"}, {"Authorization": "Bearer cli-ke"}):
            r = await client.post("/v1/chat/completions", json=CHAT, headers=headers)
            assert r.status_code == 401
            assert r.json()["error"]["code"] == "invalid_api_key" and r.json()["error"]["type"] == "invalid_request_error"
            assert "cli-key" not in r.text
            r = await client.post("/generate", json=NATIVE, headers=headers)
            assert r.status_code == 401 and r.json()["error_type"] == "unauthorized"
        for key in ("cli-key", "env-key", "other-env-key"):
            r = await client.post("/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 200
        assert (await client.post("/generate", json=NATIVE, headers={"Authorization": "Bearer cli-key"})).status_code == 200
        assert (await client.get("/v1/models")).status_code == 401
        for path in ("/health", "/metrics", "/ping"):
            assert (await client.get(path)).status_code == 200, path


async def test_clients_send_their_keys_unchanged():
    lorax = pytest.importorskip("lorax")
    eng = engine()
    async with serve(eng, make_app(eng, api_keys=("sk-test",))) as live:
        good = openai.AsyncOpenAI(base_url=live.base_url + "/v1", api_key="sk-test", max_retries=0)
        r = await good.chat.completions.create(**CHAT)
        assert r.choices[0].message.content
        bad = openai.AsyncOpenAI(base_url=live.base_url + "/v1", api_key="nope", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            await bad.chat.completions.create(**CHAT)
        ok = await asyncio.to_thread(
            lambda: lorax.Client(live.base_url, headers={"Authorization": "Bearer sk-test"}).generate("hi", max_new_tokens=3)
        )
        assert ok.generated_text


async def test_concurrency_limit_answers_429_in_each_dialect():
    eng = engine(token_interval=0.05)
    async with serve(eng, make_app(eng, max_concurrent_requests=2)) as live:
        async with httpx.AsyncClient(base_url=live.base_url, timeout=30) as client:
            long_chat = {**CHAT, "max_tokens": 40}
            busy = [asyncio.create_task(client.post("/v1/chat/completions", json=long_chat)) for _ in range(2)]
            while eng.num_unfinished_requests() < 2:
                await asyncio.sleep(0.01)
            r = await client.post("/v1/chat/completions", json=CHAT)
            assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error"
            r = await client.post("/generate", json=NATIVE)
            assert r.status_code == 429 and r.json() == {"error": "Model is overloaded", "error_type": "overloaded"}
            r = await client.post("/generate_stream", json=NATIVE)  # on a LoRAX stream: one error event
            assert r.status_code == 200 and b'"error_type":"overloaded"' in r.content
            assert all(t.status_code == 200 for t in await asyncio.gather(*busy))
            assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200  # capacity came back


async def test_body_size_limit_is_413_in_each_dialect():
    async with AsyncTestClient(make_app(engine(), max_request_body_bytes=2048)) as client:
        big = {**CHAT, "messages": [{"role": "user", "content": "x" * 5000}]}
        r = await client.post("/v1/chat/completions", json=big)
        assert r.status_code == 413 and "error" in r.json() and "message" in r.json()["error"]
        r = await client.post("/generate", json={"inputs": "x" * 5000})
        assert r.status_code == 413 and "error_type" in r.json()


async def test_n_and_stop_limits():
    async with AsyncTestClient(make_app(engine(), max_n=3, max_stop_sequences=2)) as client:
        r = await client.post("/v1/chat/completions", json={**CHAT, "n": 4, "temperature": 1})
        assert r.status_code == 400 and r.json()["error"]["param"] == "n"
        r = await client.post("/v1/chat/completions", json={**CHAT, "stop": ["a", "b", "c"]})
        assert r.status_code == 400 and r.json()["error"]["param"] == "stop"
        r = await client.post("/generate", json={"inputs": "hi", "parameters": {"stop": ["a", "b", "c"]}})
        assert r.status_code == 422
        assert r.json()["error"] == "Input validation error: `stop` supports up to 2 stop sequences. Given: 3"
        info = (await client.get("/info")).json()
        assert info["max_stop_sequences"] == 2


async def test_cors_is_off_by_default_and_configurable():
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    async with AsyncTestClient(make_app(engine())) as client:
        r = await client.options("/v1/chat/completions", headers=preflight)
        assert "access-control-allow-origin" not in r.headers
    async with AsyncTestClient(make_app(engine(), cors_allow_origins=("https://app.example",))) as client:
        r = await client.options("/v1/chat/completions", headers=preflight)
        assert r.headers.get("access-control-allow-origin") == "https://app.example"
        r = await client.post("/v1/chat/completions", json=CHAT, headers={"Origin": "https://app.example"})
        assert r.headers.get("access-control-allow-origin") == "https://app.example"


async def test_readiness_follows_the_engine():
    eng = engine()
    async with AsyncTestClient(make_app(eng, api_keys=("k",))) as client:
        r = await client.get("/ready")  # open without a key, like /health
        assert r.status_code == 200
        assert eng.aborted == []  # the start-up generation finished normally
        eng.dead = True
        assert (await client.get("/ready")).status_code == 503
        assert (await client.get("/health")).status_code == 503


async def test_max_output_tokens_limit():
    async with AsyncTestClient(make_app(engine(), max_output_tokens=5)) as client:
        r = await client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 6})
        assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
        r = await client.post("/v1/chat/completions", json={k: v for k, v in CHAT.items() if k != "max_tokens"})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 5  # no max_tokens: the limit
        r = await client.post("/generate", json={"inputs": "hi", "parameters": {"max_new_tokens": 9}})
        assert r.status_code == 422 and "at most 5 tokens" in r.json()["error"]
