"""A client that goes away must not leave the engine generating: the real app under uvicorn, real
sockets, a slow synthetic engine (10 ms per token) and requests far longer than the test."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from app.engine.synthetic import SyntheticEngine
from tests.unit.conftest import EventReader, SyntheticServer, chat_body

pytestmark = pytest.mark.parametrize("engine_kwargs", [{"token_interval": 0.01, "max_model_len": 20000}])

LONG = 10000  # tokens: 100 s at 10 ms per token


async def wait_for_abort(engine: SyntheticEngine, request_id: str, timeout: float = 2.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        # The engine id is unique per request (X-Request-Id only names the response): match its prefix.
        prefix = request_id.split("-", 1)[0] + "-"
        if engine.num_unfinished_requests() == 0 and any(a.startswith(prefix) for a in engine.aborted):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(
        f"not aborted within {timeout} s: unfinished={engine.num_unfinished_requests()}, aborted={engine.aborted}"
    )


async def read_events(response: httpx.Response, count: int) -> list[bytes]:
    """The first ``count`` SSE events of a streaming response."""
    events = await EventReader(response).take(count)
    assert len(events) == count, f"the stream ended after {len(events)} events"
    return events


async def metric(client: httpx.AsyncClient, name: str) -> float:
    text = (await client.get("/metrics")).text
    [line] = [line for line in text.splitlines() if line.startswith(name + " ")]
    return float(line.split()[1])


@pytest.mark.parametrize(
    ("path", "body", "request_id"),
    [
        ("/v1/chat/completions", chat_body(max_tokens=LONG, stream=True), "chatcmpl-gone"),
        ("/v1/completions", {"model": "synth", "prompt": "hi", "max_tokens": LONG, "stream": True}, "cmpl-gone"),
    ],
    ids=["chat", "completion"],
)
async def test_streaming_client_disconnect_aborts(
    synthetic_server: SyntheticServer, path: str, body: dict[str, Any], request_id: str
) -> None:
    engine = synthetic_server.engine
    async with httpx.AsyncClient(base_url=synthetic_server.base_url, timeout=5) as client:
        async with client.stream("POST", path, json=body, headers={"X-Request-Id": "gone"}) as response:
            assert response.status_code == 200
            events = await read_events(response, 2)
            assert all(e.startswith(b"data: {") for e in events)
            assert engine.num_unfinished_requests() == 1
            assert await metric(client, "loragate_engine_unfinished_requests") == 1.0
        # leaving the block closes the connection mid-stream
        await wait_for_abort(engine, request_id)
        assert await metric(client, "loragate_engine_unfinished_requests") == 0.0
        # the server keeps serving
        response = await client.post("/v1/chat/completions", json=chat_body(max_tokens=3))
        assert response.status_code == 200
        assert response.json()["usage"]["completion_tokens"] == 3


async def test_streaming_two_prompts_disconnect_aborts_both(synthetic_server: SyntheticServer) -> None:
    engine = synthetic_server.engine
    body = {"model": "synth", "prompt": ["one", "two"], "n": 2, "max_tokens": LONG, "stream": True}
    async with httpx.AsyncClient(base_url=synthetic_server.base_url, timeout=5) as client:
        async with client.stream("POST", "/v1/completions", json=body, headers={"X-Request-Id": "pair"}) as response:
            await read_events(response, 4)
            assert engine.num_unfinished_requests() == 2
    await wait_for_abort(engine, "cmpl-pair-0")
    aborted = [a for a in engine.aborted if a.startswith("cmpl-")]
    assert sorted(a[-2:] for a in aborted) == ["-0", "-1"]  # one engine request per prompt, both aborted


@pytest.mark.parametrize(
    ("path", "body", "request_id"),
    [
        ("/v1/chat/completions", chat_body(max_tokens=LONG), "chatcmpl-left"),
        ("/v1/completions", {"model": "synth", "prompt": "hi", "max_tokens": LONG}, "cmpl-left"),
    ],
    ids=["chat", "completion"],
)
async def test_non_streaming_client_disconnect_aborts(
    synthetic_server: SyntheticServer, path: str, body: dict[str, Any], request_id: str
) -> None:
    engine = synthetic_server.engine
    async with httpx.AsyncClient(base_url=synthetic_server.base_url, timeout=5) as client:
        task = asyncio.create_task(client.post(path, json=body, headers={"X-Request-Id": "left"}))
        await asyncio.sleep(0.2)
        assert not task.done()
        assert engine.num_unfinished_requests() == 1
        task.cancel()  # httpx closes the connection
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_for_abort(engine, request_id)
        response = await client.post("/v1/completions", json={"model": "synth", "prompt": "x", "max_tokens": 2})
        assert response.status_code == 200


async def test_requests_reusing_an_x_request_id_do_not_interfere(synthetic_server: SyntheticServer) -> None:
    headers = {"X-Request-Id": "same"}
    body = chat_body(max_tokens=LONG, stream=True)
    async with httpx.AsyncClient(base_url=synthetic_server.base_url, timeout=5) as client:
        async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as first:
            reader = EventReader(first)
            assert len(await reader.take(2)) == 2
            async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as second:
                await read_events(second, 2)
            # the second client is gone; the first one must not notice
            await asyncio.sleep(0.1)
            more = await reader.take(30)  # past what was buffered meanwhile
            assert b"data: [DONE]" not in more, f"the first stream ended: {more[-3:]}"
            assert all(json.loads(e[len(b"data: ") :])["choices"][0]["finish_reason"] is None for e in more)
