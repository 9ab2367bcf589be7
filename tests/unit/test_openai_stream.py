"""OpenAI streaming (SSE) at the byte level: ``data: <json>\\n\\n`` events, role chunks, content
deltas, exactly one finish_reason per choice, the usage chunk and the final ``data: [DONE]``."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from tests.unit.conftest import ADAPTER, BASE, chat_body, sse_events, sse_payloads

ROLE_DELTA = {"role": "assistant", "content": ""}


async def stream_chat(client: AsyncTestClient, **kwargs: Any) -> list[dict[str, Any]]:
    response = await client.post("/v1/chat/completions", json=chat_body(stream=True, **kwargs))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return sse_payloads(response.content)


async def stream_completion(client: AsyncTestClient, **kwargs: Any) -> list[dict[str, Any]]:
    response = await client.post("/v1/completions", json={"model": BASE, "stream": True, **kwargs})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return sse_payloads(response.content)


def split_usage(chunks: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Choice chunks, and the final usage chunk (``choices == []``) if there is one."""
    if chunks and chunks[-1]["choices"] == []:
        return chunks[:-1], chunks[-1]
    return chunks, None


def chat_texts(chunks: list[dict[str, Any]]) -> dict[int, str]:
    texts: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            texts[choice["index"]] = texts.get(choice["index"], "") + (choice["delta"].get("content") or "")
    return texts


def finish_reasons(chunks: list[dict[str, Any]]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            if choice["finish_reason"] is not None:
                out.setdefault(choice["index"], []).append(choice["finish_reason"])
    return out


# -- chat ---------------------------------------------------------------------------------------


async def test_chat_stream_framing(client: AsyncTestClient) -> None:
    response = await client.post("/v1/chat/completions", json=chat_body(stream=True, max_tokens=10))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.content)
    assert all(e.startswith(b"data: ") for e in events)
    assert events[-1] == b"data: [DONE]"
    assert response.content.endswith(b"data: [DONE]\n\n")
    chunks = sse_payloads(response.content)
    assert len(chunks) >= 3
    ids = {c["id"] for c in chunks}
    assert len(ids) == 1 and ids.pop().startswith("chatcmpl-")
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == BASE for c in chunks)
    assert len({c["created"] for c in chunks}) == 1


async def test_chat_stream_matches_the_non_streaming_text(client: AsyncTestClient) -> None:
    whole = await client.post("/v1/chat/completions", json=chat_body(max_tokens=30, temperature=0))
    expected = whole.json()["choices"][0]["message"]["content"]
    chunks = await stream_chat(client, max_tokens=30, temperature=0)
    assert chunks[0]["choices"] == [{"index": 0, "delta": ROLE_DELTA, "logprobs": None, "finish_reason": None}]
    for chunk in chunks[1:]:
        [choice] = chunk["choices"]
        assert set(choice["delta"]) == {"content"}
    assert chat_texts(chunks) == {0: expected}
    assert finish_reasons(chunks) == {0: ["length"]}
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert all("usage" not in c for c in chunks)


async def test_chat_stream_adapter_model(client: AsyncTestClient) -> None:
    whole = await client.post("/v1/chat/completions", json=chat_body(model=ADAPTER, max_tokens=12))
    chunks = await stream_chat(client, model=ADAPTER, max_tokens=12)
    assert all(c["model"] == ADAPTER for c in chunks)
    assert chat_texts(chunks)[0] == whole.json()["choices"][0]["message"]["content"]


async def test_chat_stream_include_usage(client: AsyncTestClient) -> None:
    chunks = await stream_chat(client, max_tokens=9, stream_options={"include_usage": True})
    choice_chunks, usage_chunk = split_usage(chunks)
    assert usage_chunk is not None, "no final usage chunk"
    usage = usage_chunk["usage"]
    assert usage["completion_tokens"] == 9
    assert usage["total_tokens"] == usage["prompt_tokens"] + 9
    assert all("usage" not in c or c["usage"] is None for c in choice_chunks)
    assert finish_reasons(choice_chunks) == {0: ["length"]}


async def test_chat_stream_continuous_usage(client: AsyncTestClient) -> None:
    opts = {"include_usage": True, "continuous_usage_stats": True}
    chunks = await stream_chat(client, max_tokens=6, stream_options=opts)
    assert all("usage" in c for c in chunks)
    prompt_tokens = chunks[0]["usage"]["prompt_tokens"]
    assert chunks[0]["usage"]["completion_tokens"] == 0  # the role chunk
    completed = [c["usage"]["completion_tokens"] for c in chunks]
    assert completed == sorted(completed)
    assert completed[-1] == 6
    assert all(c["usage"]["total_tokens"] == prompt_tokens + c["usage"]["completion_tokens"] for c in chunks)
    assert chunks[-1]["choices"] == []


async def test_chat_stream_n2(client: AsyncTestClient) -> None:
    whole = await client.post("/v1/chat/completions", json=chat_body(n=2, max_tokens=8))
    expected = {c["index"]: c["message"]["content"] for c in whole.json()["choices"]}
    chunks = await stream_chat(client, n=2, max_tokens=8, stream_options={"include_usage": True})
    choice_chunks, usage_chunk = split_usage(chunks)
    assert all(len(c["choices"]) == 1 for c in choice_chunks)
    # one role chunk per index, first
    assert [(c["choices"][0]["index"], c["choices"][0]["delta"]) for c in choice_chunks[:2]] == [
        (0, ROLE_DELTA),
        (1, ROLE_DELTA),
    ]
    assert all("role" not in c["choices"][0]["delta"] for c in choice_chunks[2:])
    assert chat_texts(choice_chunks) == expected
    assert finish_reasons(choice_chunks) == {0: ["length"], 1: ["length"]}
    assert usage_chunk is not None and usage_chunk["usage"]["completion_tokens"] == 16


async def test_chat_stream_stop_string(client: AsyncTestClient) -> None:
    whole = await client.post("/v1/chat/completions", json=chat_body(max_tokens=40))
    full = whole.json()["choices"][0]["message"]["content"]
    stop = full[20:24]
    start = full.find(stop)
    assert start > 0
    chunks = await stream_chat(client, max_tokens=40, stop=stop)
    assert chat_texts(chunks) == {0: full[:start]}
    assert finish_reasons(chunks) == {0: ["stop"]}


@pytest.mark.parametrize("engine_kwargs", [{"eos_after": 4}])
async def test_chat_stream_eos(client: AsyncTestClient) -> None:
    chunks = await stream_chat(client, max_tokens=40)
    assert len(chat_texts(chunks)[0]) == 4
    assert finish_reasons(chunks) == {0: ["stop"]}


async def test_chat_stream_logprobs(client: AsyncTestClient) -> None:
    chunks = await stream_chat(client, max_tokens=7, logprobs=True, top_logprobs=2)
    entries = [e for c in chunks[1:] for e in c["choices"][0]["logprobs"]["content"]]
    assert len(entries) == 7
    assert "".join(e["token"] for e in entries) == chat_texts(chunks)[0]
    assert all(len(e["top_logprobs"]) == 2 for e in entries)


@pytest.mark.parametrize("engine_kwargs", [{"tokens_per_step": 3}])
async def test_chat_stream_several_tokens_per_event(client: AsyncTestClient) -> None:
    whole = await client.post("/v1/chat/completions", json=chat_body(max_tokens=10))
    chunks = await stream_chat(client, max_tokens=10, stream_options={"include_usage": True})
    choice_chunks, usage_chunk = split_usage(chunks)
    assert chat_texts(choice_chunks) == {0: whole.json()["choices"][0]["message"]["content"]}
    assert usage_chunk is not None and usage_chunk["usage"]["completion_tokens"] == 10


# -- legacy completions -------------------------------------------------------------------------


def completion_texts(chunks: list[dict[str, Any]]) -> dict[int, str]:
    texts: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
    return texts


async def test_completion_stream_matches_non_streaming(client: AsyncTestClient) -> None:
    whole = (await client.post("/v1/completions", json={"model": BASE, "prompt": "Once", "max_tokens": 12})).json()
    chunks = await stream_completion(client, prompt="Once", max_tokens=12)
    assert all(c["object"] == "text_completion" and c["id"].startswith("cmpl-") for c in chunks)
    assert all(len(c["choices"]) == 1 for c in chunks)
    assert completion_texts(chunks) == {0: whole["choices"][0]["text"]}
    assert finish_reasons(chunks) == {0: ["length"]}


async def test_completion_stream_two_prompts_n2(client: AsyncTestClient) -> None:
    prompts = ["first prompt", "the second one"]
    whole = (await client.post("/v1/completions", json={"model": BASE, "prompt": prompts, "n": 2, "max_tokens": 6})).json()
    expected = {c["index"]: c["text"] for c in whole["choices"]}
    chunks = await stream_completion(client, prompt=prompts, n=2, max_tokens=6, stream_options={"include_usage": True})
    choice_chunks, usage_chunk = split_usage(chunks)
    assert all(len(c["choices"]) == 1 for c in choice_chunks)
    assert completion_texts(choice_chunks) == expected
    assert set(expected) == {0, 1, 2, 3}
    assert finish_reasons(choice_chunks) == {i: ["length"] for i in range(4)}
    assert usage_chunk is not None
    assert usage_chunk["usage"]["completion_tokens"] == 24
    assert usage_chunk["usage"]["prompt_tokens"] == whole["usage"]["prompt_tokens"]


async def test_completion_stream_echo(client: AsyncTestClient) -> None:
    chunks = await stream_completion(client, prompt="Echo me", max_tokens=5, echo=True)
    plain = (await client.post("/v1/completions", json={"model": BASE, "prompt": "Echo me", "max_tokens": 5})).json()
    assert completion_texts(chunks) == {0: "Echo me" + plain["choices"][0]["text"]}
    assert chunks[0]["choices"][0]["text"].startswith("Echo me")


async def test_completion_stream_echo_logprobs(client: AsyncTestClient) -> None:
    chunks = await stream_completion(
        client, prompt="Echo me", max_tokens=5, echo=True, logprobs=1, stream_options={"include_usage": True}
    )
    choice_chunks, usage_chunk = split_usage(chunks)
    assert usage_chunk is not None
    tokens, token_logprobs = [], []
    for chunk in choice_chunks:
        lp = chunk["choices"][0]["logprobs"]
        tokens += lp["tokens"]
        token_logprobs += lp["token_logprobs"]
    usage = usage_chunk["usage"]
    assert len(tokens) == usage["prompt_tokens"] + usage["completion_tokens"]
    assert token_logprobs[0] is None
    assert all(isinstance(x, float) for x in token_logprobs[1:])


async def test_completion_stream_continuous_usage(client: AsyncTestClient) -> None:
    opts = {"include_usage": True, "continuous_usage_stats": True}
    chunks = await stream_completion(client, prompt="Once", max_tokens=5, stream_options=opts)
    assert all("usage" in c for c in chunks)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 5
    counts = Counter(c["usage"]["prompt_tokens"] for c in chunks)
    assert len(counts) == 1


async def test_completion_stream_logprobs_match_non_streaming(client: AsyncTestClient) -> None:
    body = {"model": BASE, "prompt": "Echo me", "max_tokens": 6, "echo": True, "logprobs": 2}
    whole = (await client.post("/v1/completions", json=body)).json()["choices"][0]["logprobs"]
    chunks = await stream_completion(client, **{k: v for k, v in body.items() if k != "model"})
    streamed: dict[str, list[Any]] = {key: [] for key in whole}
    for chunk in chunks:
        for key in streamed:
            streamed[key] += chunk["choices"][0]["logprobs"][key]
    assert streamed == whole


async def test_completion_stream_echo_n2_echoes_every_choice(client: AsyncTestClient) -> None:
    chunks = await stream_completion(client, prompt="Echo me", max_tokens=3, n=2, echo=True)
    texts = completion_texts(chunks)
    assert set(texts) == {0, 1}
    assert all(text.startswith("Echo me") and len(text) == len("Echo me") + 3 for text in texts.values())
