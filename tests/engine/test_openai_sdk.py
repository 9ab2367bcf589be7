"""The official ``openai`` SDK against the real server: real vLLM on CPU, the demo model and its
LoRA adapters. One server per session (tests/conftest.py)."""

from __future__ import annotations

import json

import openai
import pytest

pytestmark = pytest.mark.engine

MESSAGES = [{"role": "user", "content": "Tell me about the weather in the city."}]


@pytest.fixture(scope="module")
def client(live_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=live_server.base_url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def aclient(live_server) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=live_server.base_url + "/v1", api_key="unused", max_retries=0, timeout=120)


def _greedy_chat(client: openai.OpenAI, model: str, max_tokens: int = 16) -> str:
    r = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=max_tokens, temperature=0)
    return r.choices[0].message.content


def _stream_chat(client: openai.OpenAI, model: str, **kwargs) -> tuple[str, list]:
    chunks = list(client.chat.completions.create(model=model, messages=MESSAGES, stream=True, **kwargs))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


@pytest.mark.parametrize("model", ["loragate-demo", "demo-lora-a", "demo-lora-b"])
def test_chat_non_streaming_through_base_and_each_adapter(client, model):
    r = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=12, temperature=0)
    assert r.object == "chat.completion"
    assert r.model == model
    choice = r.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason == "length"
    assert r.usage.completion_tokens == 12
    assert r.usage.prompt_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + 12


@pytest.mark.parametrize("model", ["loragate-demo", "demo-lora-a", "demo-lora-b"])
def test_chat_streaming_matches_non_streaming(client, model):
    expected = _greedy_chat(client, model, max_tokens=12)
    text, chunks = _stream_chat(client, model, max_tokens=12, temperature=0)
    assert text == expected
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert all(c.id == chunks[0].id and c.model == model for c in chunks)


def test_adapters_change_greedy_output(client):
    base = _greedy_chat(client, "loragate-demo")
    a = _greedy_chat(client, "demo-lora-a")
    b = _greedy_chat(client, "demo-lora-b")
    assert base != a and base != b and a != b
    # and greedy decoding is deterministic through each of them
    assert _greedy_chat(client, "demo-lora-a") == a


def test_adapter_streams_differ_from_base_streams(client):
    base, _ = _stream_chat(client, "loragate-demo", max_tokens=10, temperature=0)
    lora, _ = _stream_chat(client, "demo-lora-b", max_tokens=10, temperature=0)
    assert base != lora


def test_n2_gives_two_choices_and_interleaved_stream(client):
    r = client.chat.completions.create(model="demo-lora-a", messages=MESSAGES, n=2, max_tokens=8, temperature=1.0, seed=3)
    assert sorted(c.index for c in r.choices) == [0, 1]
    assert r.usage.completion_tokens == 16
    chunks = list(
        client.chat.completions.create(
            model="demo-lora-a", messages=MESSAGES, n=2, max_tokens=8, temperature=1.0, stream=True
        )
    )
    assert all(len(c.choices) == 1 for c in chunks)
    indices = [c.choices[0].index for c in chunks]
    assert set(indices) == {0, 1}
    for i in (0, 1):
        assert [c.choices[0].finish_reason for c in chunks if c.choices[0].index == i][-1] == "length"


def test_stop_sequence_ends_the_completion_before_it(client):
    full = _greedy_chat(client, "loragate-demo", max_tokens=24)
    words = full.split()
    stop = next(w for w in words[2:] if full.find(w) > 0)
    cut = full[: full.find(stop)]
    r = client.chat.completions.create(
        model="loragate-demo", messages=MESSAGES, max_tokens=24, temperature=0, stop=[stop]
    )
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == cut
    assert stop not in r.choices[0].message.content
    text, chunks = _stream_chat(client, "loragate-demo", max_tokens=24, temperature=0, stop=stop)
    assert text == cut
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]


def test_logprobs_and_top_logprobs(client):
    r = client.chat.completions.create(
        model="demo-lora-a", messages=MESSAGES, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3
    )
    content = r.choices[0].logprobs.content
    assert len(content) == 6
    assert "".join(t.token for t in content) == r.choices[0].message.content
    for entry in content:
        assert entry.logprob <= 0
        assert len(entry.top_logprobs) == 3
        # greedy: the chosen token is the most likely one
        assert entry.top_logprobs[0].token == entry.token
        assert entry.bytes == list(entry.token.encode())


def test_include_usage_adds_a_final_usage_chunk(client):
    _, chunks = _stream_chat(client, "loragate-demo", max_tokens=7, stream_options={"include_usage": True})
    last = chunks[-1]
    assert last.choices == []
    assert last.usage.completion_tokens == 7
    assert last.usage.total_tokens == last.usage.prompt_tokens + 7
    assert all(c.usage is None for c in chunks[:-1])
    _, chunks = _stream_chat(
        client, "loragate-demo", max_tokens=5,
        stream_options={"include_usage": True, "continuous_usage_stats": True},
    )
    assert all(c.usage is not None for c in chunks)
    assert [c.usage.completion_tokens for c in chunks][-1] == 5


def test_seed_makes_sampling_reproducible(client):
    kwargs = dict(model="demo-lora-b", messages=MESSAGES, max_tokens=10, temperature=1.0, seed=1234)
    first = client.chat.completions.create(**kwargs).choices[0].message.content
    assert client.chat.completions.create(**kwargs).choices[0].message.content == first


def test_completions_non_streaming_streaming_and_echo(client):
    r = client.completions.create(model="demo-lora-a", prompt="The weather", max_tokens=8, temperature=0)
    assert r.object == "text_completion"
    text = r.choices[0].text
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 8
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="demo-lora-a", prompt="The weather", max_tokens=8, temperature=0, stream=True) if c.choices)
    assert streamed == text
    echoed = client.completions.create(model="demo-lora-a", prompt="The weather", max_tokens=8, temperature=0, echo=True)
    assert echoed.choices[0].text == "The weather" + text


def test_completions_prompt_list_and_legacy_logprobs(client):
    r = client.completions.create(
        model="loragate-demo", prompt=["The weather", "A city"], max_tokens=4, temperature=0, logprobs=2
    )
    assert [c.index for c in r.choices] == [0, 1]
    for c in r.choices:
        lp = c.logprobs
        assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 4
        assert "".join(lp.tokens) == c.text
        assert all(len(t) <= 2 for t in lp.top_logprobs)
    single = client.completions.create(model="loragate-demo", prompt="A city", max_tokens=4, temperature=0)
    assert r.choices[1].text == single.choices[0].text


def test_models_lists_base_and_adapters(client, live_server):
    models = {m.id: m for m in client.models.list().data}
    assert {"loragate-demo", "demo-lora-a", "demo-lora-b"} <= set(models)  # plus any loaded on demand
    for name, path in live_server.adapters.items():
        card = models[name].model_dump()
        assert card["parent"] == "loragate-demo"
        assert card["root"] == str(path)
    assert models["loragate-demo"].model_dump()["parent"] is None


def test_errors_have_openai_shape_and_status(client):
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="no-such-adapter", messages=MESSAGES)
    assert exc.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="loragate-demo", messages=MESSAGES, temperature=3)
    assert exc.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(
            model="loragate-demo", messages=[{"role": "user", "content": "word " * 2000}], max_tokens=4
        )
    assert "context length" in exc.value.body["message"]
    with pytest.raises(openai.BadRequestError):  # vLLM rejects greedy sampling with n > 1
        client.chat.completions.create(model="loragate-demo", messages=MESSAGES, temperature=0, n=2)


def test_json_response_format_is_valid_json(client):
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 12}, "rain": {"type": "boolean"}},
        "required": ["city", "rain"],
        "additionalProperties": False,
    }
    r = client.chat.completions.create(
        model="demo-lora-a", messages=MESSAGES, max_tokens=60, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "weather", "schema": schema}},
    )
    data = json.loads(r.choices[0].message.content)
    assert set(data) == {"city", "rain"} and isinstance(data["rain"], bool)


async def test_concurrent_streams_through_different_adapters(aclient):
    import asyncio

    async def one(model: str) -> str:
        stream = await aclient.chat.completions.create(
            model=model, messages=MESSAGES, max_tokens=10, temperature=0, stream=True
        )
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    models = ["loragate-demo", "demo-lora-a", "demo-lora-b"] * 3
    results = await asyncio.gather(*(one(m) for m in models))
    by_model = {m: {r for mm, r in zip(models, results) if mm == m} for m in set(models)}
    assert all(len(v) == 1 for v in by_model.values())  # same model, same greedy output, under batching
    assert len({next(iter(v)) for v in by_model.values()}) == 3
