"""Non-streaming OpenAI responses on the synthetic engine: chat completions, legacy completions,
``/v1/models``, ``/health`` and ``/metrics``. The synthetic engine is deterministic and emits one
byte per token, so text lengths equal token counts."""

from __future__ import annotations

from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from tests.unit.conftest import ADAPTER, ADAPTER_PATH, BASE, MAX_MODEL_LEN, chat_body


async def chat(client: AsyncTestClient, **kwargs: Any) -> dict[str, Any]:
    response = await client.post("/v1/chat/completions", json=chat_body(**kwargs))
    assert response.status_code == 200, response.text
    return response.json()


async def complete(client: AsyncTestClient, **kwargs: Any) -> dict[str, Any]:
    response = await client.post("/v1/completions", json={"model": BASE, **kwargs})
    assert response.status_code == 200, response.text
    return response.json()


def assert_usage(body: dict[str, Any]) -> None:
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def middle_substring(text: str, length: int = 3) -> tuple[int, str]:
    """A substring of ``text`` whose first occurrence starts past the beginning (a stop string
    that must cut the text)."""
    for start in range(len(text) // 3, len(text) - length):
        sub = text[start : start + length]
        if text.find(sub) == start and sub.strip():
            return start, sub
    raise AssertionError(f"no usable substring in {text!r}")


# -- chat ----------------------------------------------------------------------------------------


async def test_chat_completion_shape(client: AsyncTestClient) -> None:
    body = await chat(client, max_tokens=7)
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int)
    assert body["model"] == BASE
    [choice] = body["choices"]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str) and len(choice["message"]["content"]) == 7
    assert choice["finish_reason"] == "length"
    assert choice["logprobs"] is None
    assert body["usage"]["completion_tokens"] == 7
    assert_usage(body)


async def test_chat_model_echoes_the_adapter_name(client: AsyncTestClient) -> None:
    assert (await chat(client, model=ADAPTER, max_tokens=2))["model"] == ADAPTER


async def test_chat_request_id_header_names_the_completion(client: AsyncTestClient) -> None:
    response = await client.post("/v1/chat/completions", json=chat_body(max_tokens=2), headers={"X-Request-Id": "abc123"})
    assert response.json()["id"] == "chatcmpl-abc123"


async def test_chat_is_deterministic_and_adapter_changes_the_text(client: AsyncTestClient) -> None:
    base_1 = (await chat(client, max_tokens=24, temperature=0))["choices"][0]["message"]["content"]
    base_2 = (await chat(client, max_tokens=24, temperature=0))["choices"][0]["message"]["content"]
    adapter = (await chat(client, model=ADAPTER, max_tokens=24, temperature=0))["choices"][0]["message"]["content"]
    assert base_1 == base_2
    assert adapter != base_1
    assert len(adapter) == 24


async def test_chat_n2_gives_two_choices(client: AsyncTestClient) -> None:
    body = await chat(client, n=2, max_tokens=6)
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert all(c["finish_reason"] == "length" for c in body["choices"])
    assert all(len(c["message"]["content"]) == 6 for c in body["choices"])
    assert body["usage"]["completion_tokens"] == 12
    assert_usage(body)


async def test_chat_max_completion_tokens_wins_over_max_tokens(client: AsyncTestClient) -> None:
    body = await chat(client, max_tokens=9, max_completion_tokens=4)
    assert body["usage"]["completion_tokens"] == 4


async def test_chat_stop_string_ends_with_stop_and_is_not_in_the_content(client: AsyncTestClient) -> None:
    full = (await chat(client, max_tokens=40))["choices"][0]["message"]["content"]
    start, stop = middle_substring(full)
    body = await chat(client, max_tokens=40, stop=[stop, "\u2603never"])
    choice = body["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["content"] == full[:start]
    assert stop not in choice["message"]["content"]
    assert_usage(body)


async def test_chat_stop_string_included_when_asked(client: AsyncTestClient) -> None:
    full = (await chat(client, max_tokens=40))["choices"][0]["message"]["content"]
    start, stop = middle_substring(full)
    body = await chat(client, max_tokens=40, stop=stop, include_stop_str_in_output=True)
    assert body["choices"][0]["message"]["content"] == full[: start + len(stop)]
    assert body["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("engine_kwargs", [{"eos_after": 5}])
async def test_chat_eos_ends_with_stop(client: AsyncTestClient) -> None:
    body = await chat(client, max_tokens=50)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert len(choice["message"]["content"]) == 5
    assert "</s>" not in choice["message"]["content"]
    assert 5 <= body["usage"]["completion_tokens"] <= 6


@pytest.mark.parametrize("engine_kwargs", [{"eos_after": 5}])
async def test_chat_ignore_eos_runs_to_max_tokens(client: AsyncTestClient) -> None:
    body = await chat(client, max_tokens=12, ignore_eos=True)
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 12


async def test_chat_logprobs_with_top_logprobs(client: AsyncTestClient) -> None:
    body = await chat(client, max_tokens=8, logprobs=True, top_logprobs=2)
    choice = body["choices"][0]
    content = choice["logprobs"]["content"]
    assert len(content) == body["usage"]["completion_tokens"] == 8
    assert "".join(entry["token"] for entry in content) == choice["message"]["content"]
    for entry in content:
        assert isinstance(entry["logprob"], float) and entry["logprob"] <= 0
        assert entry["bytes"] == list(entry["token"].encode())
        assert len(entry["top_logprobs"]) == 2
        for top in entry["top_logprobs"]:
            assert set(top) == {"token", "logprob", "bytes"}


async def test_chat_logprobs_without_top_logprobs(client: AsyncTestClient) -> None:
    body = await chat(client, max_tokens=3, logprobs=True)
    content = body["choices"][0]["logprobs"]["content"]
    assert len(content) == 3
    assert all(entry["top_logprobs"] == [] for entry in content)


async def test_chat_text_content_parts_equal_the_joined_string(client: AsyncTestClient) -> None:
    parts = [{"type": "text", "text": "Tell me"}, {"type": "text", "text": "about foxes."}]
    as_parts = await chat(client, messages=[{"role": "user", "content": parts}], max_tokens=10)
    as_text = await chat(client, messages=[{"role": "user", "content": "Tell me\nabout foxes."}], max_tokens=10)
    assert as_parts["usage"] == as_text["usage"]
    assert as_parts["choices"][0]["message"] == as_text["choices"][0]["message"]


async def test_chat_without_max_tokens_runs_to_the_context_limit(client: AsyncTestClient) -> None:
    body = await chat(client)
    assert body["usage"]["total_tokens"] == MAX_MODEL_LEN
    assert body["choices"][0]["finish_reason"] == "length"


# -- legacy completions -------------------------------------------------------------------------


async def test_completion_string_prompt(client: AsyncTestClient) -> None:
    body = await complete(client, prompt="Once upon a time")
    assert body["id"].startswith("cmpl-")
    assert body["object"] == "text_completion"
    assert body["model"] == BASE
    [choice] = body["choices"]
    assert choice["index"] == 0
    assert len(choice["text"]) == 16  # OpenAI's default max_tokens for completions
    assert choice["finish_reason"] == "length"
    assert choice["logprobs"] is None
    assert body["usage"] == {"prompt_tokens": 1 + len("Once upon a time"), "completion_tokens": 16, "total_tokens": 33}


async def test_completion_two_prompts(client: AsyncTestClient) -> None:
    one = await complete(client, prompt="first prompt", max_tokens=5)
    two = await complete(client, prompt="the second one", max_tokens=5)
    both = await complete(client, prompt=["first prompt", "the second one"], max_tokens=5)
    assert [c["index"] for c in both["choices"]] == [0, 1]
    assert [c["text"] for c in both["choices"]] == [one["choices"][0]["text"], two["choices"][0]["text"]]
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        assert both["usage"][key] == one["usage"][key] + two["usage"][key]


async def test_completion_two_prompts_n2(client: AsyncTestClient) -> None:
    body = await complete(client, prompt=["first prompt", "the second one"], max_tokens=4, n=2)
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    assert body["usage"]["completion_tokens"] == 16


async def test_completion_token_prompt(client: AsyncTestClient) -> None:
    as_text = await complete(client, prompt="hi", max_tokens=6)
    # "hi" renders to BOS (256) + the bytes of "hi"
    as_ids = await complete(client, prompt=[256, ord("h"), ord("i")], max_tokens=6)
    assert as_ids["usage"]["prompt_tokens"] == 3
    assert as_ids["choices"][0]["text"] == as_text["choices"][0]["text"]
    batch = await complete(client, prompt=[[256, ord("h"), ord("i")], [104]], max_tokens=6)
    assert [c["index"] for c in batch["choices"]] == [0, 1]
    assert batch["choices"][0]["text"] == as_text["choices"][0]["text"]


async def test_completion_echo(client: AsyncTestClient) -> None:
    plain = await complete(client, prompt="Echo me", max_tokens=5)
    echoed = await complete(client, prompt="Echo me", max_tokens=5, echo=True)
    assert echoed["choices"][0]["text"] == "Echo me" + plain["choices"][0]["text"]
    assert echoed["usage"] == plain["usage"]


async def test_completion_logprobs(client: AsyncTestClient) -> None:
    body = await complete(client, prompt="Echo me", max_tokens=5, logprobs=2)
    choice = body["choices"][0]
    lp = choice["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(lp["text_offset"]) == 5
    assert "".join(lp["tokens"]) == choice["text"]
    assert lp["text_offset"] == list(range(5))  # one character per token
    assert all(len(top) <= 2 for top in lp["top_logprobs"])


async def test_completion_echo_with_logprobs_includes_the_prompt(client: AsyncTestClient) -> None:
    body = await complete(client, prompt="Echo me", max_tokens=5, echo=True, logprobs=1)
    choice = body["choices"][0]
    lp = choice["logprobs"]
    assert choice["text"].startswith("Echo me")
    assert len(lp["tokens"]) == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    assert lp["token_logprobs"][0] is None
    assert lp["top_logprobs"][0] is None
    assert all(isinstance(x, float) for x in lp["token_logprobs"][1:])
    assert lp["text_offset"] == sorted(lp["text_offset"])
    assert lp["text_offset"][-1] == len(choice["text"]) - 1


# -- models, health, metrics -------------------------------------------------------------------


async def test_models_lists_base_and_adapters(client: AsyncTestClient) -> None:
    response = await client.get("/v1/models")
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    cards = {card["id"]: card for card in body["data"]}
    assert list(cards) == [BASE, ADAPTER]
    assert all(card["object"] == "model" and isinstance(card["created"], int) for card in body["data"])
    assert cards[BASE]["parent"] is None
    assert cards[BASE]["max_model_len"] == MAX_MODEL_LEN
    assert cards[ADAPTER]["parent"] == BASE
    assert cards[ADAPTER]["root"] == ADAPTER_PATH


async def test_health(client: AsyncTestClient) -> None:
    assert (await client.get("/health")).status_code == 200


async def test_metrics(client: AsyncTestClient) -> None:
    await chat(client, max_tokens=2)
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    lines = response.text.splitlines()
    assert "loragate_engine_unfinished_requests 0.0" in lines
