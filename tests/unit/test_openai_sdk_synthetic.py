"""The official ``openai`` SDK against the app on the synthetic engine, over real HTTP (uvicorn
in-process). A client library written by someone else is the judge of wire compatibility."""

from __future__ import annotations

from typing import AsyncIterator

import openai
import pytest

from tests.unit.conftest import ADAPTER, ADAPTER_PATH, BASE, USER, SyntheticServer


@pytest.fixture
async def sdk(synthetic_server: SyntheticServer) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=f"{synthetic_server.base_url}/v1", api_key="x", max_retries=0, timeout=10)
    try:
        yield client
    finally:
        await client.close()


async def test_chat_non_streaming(sdk: openai.AsyncOpenAI) -> None:
    completion = await sdk.chat.completions.create(model=BASE, messages=USER, max_tokens=12)  # type: ignore[arg-type]
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == BASE
    [choice] = completion.choices
    assert choice.message.role == "assistant"
    assert choice.message.content and len(choice.message.content) == 12
    assert choice.finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 12


async def test_chat_streaming_matches_non_streaming(sdk: openai.AsyncOpenAI) -> None:
    whole = await sdk.chat.completions.create(model=ADAPTER, messages=USER, max_tokens=20)  # type: ignore[arg-type]
    stream = await sdk.chat.completions.create(
        model=ADAPTER, messages=USER, max_tokens=20, stream=True, stream_options={"include_usage": True}  # type: ignore[arg-type]
    )
    parts, finish, usage = [], [], None
    async for chunk in stream:
        assert chunk.model == ADAPTER
        for choice in chunk.choices:
            parts.append(choice.delta.content or "")
            if choice.finish_reason is not None:
                finish.append(choice.finish_reason)
        if chunk.usage is not None:
            usage = chunk.usage
    assert "".join(parts) == whole.choices[0].message.content
    assert finish == ["length"]
    assert usage is not None and usage.completion_tokens == 20


async def test_completions(sdk: openai.AsyncOpenAI) -> None:
    completion = await sdk.completions.create(model=BASE, prompt=["Once upon", "a time"], max_tokens=5, echo=True)
    assert [c.index for c in completion.choices] == [0, 1]
    assert completion.choices[0].text.startswith("Once upon")
    assert completion.choices[1].text.startswith("a time")
    assert completion.usage is not None and completion.usage.completion_tokens == 10


async def test_completions_streaming(sdk: openai.AsyncOpenAI) -> None:
    whole = await sdk.completions.create(model=BASE, prompt="Once upon", max_tokens=8)
    stream = await sdk.completions.create(model=BASE, prompt="Once upon", max_tokens=8, stream=True)
    text = "".join([chunk.choices[0].text async for chunk in stream])
    assert text == whole.choices[0].text


async def test_models_list(sdk: openai.AsyncOpenAI) -> None:
    models = [m async for m in sdk.models.list()]
    assert [m.id for m in models] == [BASE, ADAPTER]
    adapter = models[1].model_dump()
    assert adapter["parent"] == BASE and adapter["root"] == ADAPTER_PATH


async def test_unknown_model_raises_not_found(sdk: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        await sdk.chat.completions.create(model="no-such-model", messages=USER)  # type: ignore[arg-type]
    assert info.value.code == "model_not_found"
    assert info.value.param == "model"


async def test_bad_temperature_raises_bad_request(sdk: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await sdk.chat.completions.create(model=BASE, messages=USER, temperature=5)  # type: ignore[arg-type]
    assert info.value.param == "temperature"


async def test_bad_request_while_streaming_raises_before_the_stream(sdk: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        await sdk.chat.completions.create(model=BASE, messages=USER, stream=True, top_p=0)  # type: ignore[arg-type]
