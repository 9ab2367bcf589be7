"""Raw HTTP against the real server: SSE framing byte by byte, and client disconnects aborting the
engine request."""

from __future__ import annotations

import json
import re
import time

import httpx
import pytest

pytestmark = pytest.mark.engine

CHAT = {"model": "demo-lora-a", "messages": [{"role": "user", "content": "Hello there"}]}


def _unfinished(base_url: str) -> float:
    text = httpx.get(base_url + "/metrics", timeout=10).text
    match = re.search(r"^loragate_engine_unfinished_requests (\S+)$", text, re.M)
    assert match, "loragate_engine_unfinished_requests missing from /metrics"
    return float(match.group(1))


def _wait_until_idle(base_url: str, timeout: float = 10.0) -> float:
    deadline = time.monotonic() + timeout
    while (value := _unfinished(base_url)) != 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    return value


def test_chat_sse_framing_byte_by_byte(live_server):
    body = {**CHAT, "max_tokens": 6, "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", live_server.base_url + "/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["cache-control"] == "no-cache"
        raw = r.read()
    assert raw.endswith(b"\n\ndata: [DONE]\n\n")
    events = raw.split(b"\n\n")
    assert events[-1] == b""
    events = events[:-1]
    assert events[-1] == b"data: [DONE]"
    payloads = []
    for event in events[:-1]:
        assert event.startswith(b"data: {") and b"\n" not in event and b"\r" not in event
        payloads.append(json.loads(event[len(b"data: "):]))
    ids = {p["id"] for p in payloads}
    assert len(ids) == 1 and next(iter(ids)).startswith("chatcmpl-")
    assert all(p["object"] == "chat.completion.chunk" and p["model"] == "demo-lora-a" for p in payloads)
    assert payloads[0]["choices"] == [
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
    ]
    content = payloads[1:-1]
    assert all(set(p["choices"][0]) == {"index", "delta", "logprobs", "finish_reason"} for p in content)
    assert [p["choices"][0]["finish_reason"] for p in content][-1] == "length"
    assert all(p["choices"][0]["finish_reason"] is None for p in content[:-1])
    assert payloads[-1]["choices"] == [] and payloads[-1]["usage"]["completion_tokens"] == 6


def test_completion_sse_framing(live_server):
    body = {"model": "loragate-demo", "prompt": "Hello", "max_tokens": 4, "stream": True}
    with httpx.stream("POST", live_server.base_url + "/v1/completions", json=body, timeout=60) as r:
        raw = r.read()
    events = raw.split(b"\n\n")[:-1]
    assert events[-1] == b"data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert all(c["object"] == "text_completion" and set(c["choices"][0]) >= {"index", "text", "finish_reason"}
               for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_error_before_stream_is_plain_json_with_status(live_server):
    body = {**CHAT, "model": "missing", "stream": True}
    r = httpx.post(live_server.base_url + "/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["error"]["code"] == "model_not_found"


def test_disconnect_mid_stream_aborts_the_engine_request(live_server):
    assert _wait_until_idle(live_server.base_url) == 0
    body = {**CHAT, "max_tokens": 1000, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.Client(timeout=60) as http:
        with http.stream("POST", live_server.base_url + "/v1/chat/completions", json=body) as r:
            lines = r.iter_lines()
            events = [line for line in (next(lines) for _ in range(6)) if line]
            assert len(events) == 3 and all(e.startswith("data: {") for e in events)
            assert _unfinished(live_server.base_url) >= 1  # still generating while we hold the stream
    # connection closed after 3 events: nothing may keep generating for nobody
    assert _wait_until_idle(live_server.base_url) == 0


def test_disconnect_during_non_streaming_request_aborts(live_server):
    assert _wait_until_idle(live_server.base_url) == 0
    body = {**CHAT, "max_tokens": 1000, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(live_server.base_url + "/v1/chat/completions", json=body, timeout=0.5)
    assert _wait_until_idle(live_server.base_url) == 0


def test_health_and_metrics(live_server):
    assert httpx.get(live_server.base_url + "/health").status_code == 200
    text = httpx.get(live_server.base_url + "/metrics").text
    assert "loragate_engine_unfinished_requests" in text
    assert "vllm:num_requests_running" in text  # vLLM's own engine metrics on the same endpoint
