"""OpenAI error behaviour: validation (400 naming the parameter), unknown models (404), context
limits, engine failures before and after a stream has started. Error bodies must have OpenAI's shape
``{"error": {"message", "type", "param", "code"}}``, which the ``openai`` SDK parses."""

from __future__ import annotations

import json
from typing import Any, AsyncIterator

import httpx
import pytest

from app.engine.synthetic import SyntheticEngine
from app.errors import EngineDeadError, EngineError, LoragateError
from app.types import ChatMessage
from litestar.testing import AsyncTestClient
from tests.unit.conftest import (
    ADAPTER,
    BASE,
    MAX_MODEL_LEN,
    EventReader,
    SyntheticServer,
    assert_openai_error,
    chat_body,
    make_app,
    sse_events,
    sse_payloads,
)

# -- schema validation -----------------------------------------------------------------------

CHAT_INVALID = [
    pytest.param({"temperature": 2.5}, "temperature", id="temperature>2"),
    pytest.param({"temperature": -0.1}, "temperature", id="temperature<0"),
    pytest.param({"top_p": 0}, "top_p", id="top_p=0"),
    pytest.param({"top_p": 1.5}, "top_p", id="top_p>1"),
    pytest.param({"n": 0}, "n", id="n=0"),
    pytest.param({"presence_penalty": 3}, "presence_penalty", id="presence_penalty=3"),
    pytest.param({"frequency_penalty": -3}, "frequency_penalty", id="frequency_penalty=-3"),
    pytest.param({"max_tokens": 0}, "max_tokens", id="max_tokens=0"),
    pytest.param({"logprobs": True, "top_logprobs": 21}, "top_logprobs", id="top_logprobs>20"),
    pytest.param({"messages": []}, "messages", id="empty-messages"),
    pytest.param({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role", id="bad-role"),
    pytest.param({"stop": ""}, "stop", id="empty-stop-string"),
    pytest.param({"stop": ["ok", ""]}, "stop", id="empty-stop-in-list"),
    pytest.param({"logit_bias": {"abc": 1}}, "logit_bias", id="logit_bias-non-integer-key"),
    pytest.param({"logit_bias": {"12": 500}}, "logit_bias", id="logit_bias-out-of-range"),
    pytest.param({"model": ""}, "model", id="empty-model"),
]


@pytest.mark.parametrize(("extra", "param"), CHAT_INVALID)
async def test_chat_invalid_parameter_is_400_naming_it(client: AsyncTestClient, extra: dict[str, Any], param: str) -> None:
    response = await client.post("/v1/chat/completions", json=chat_body(**extra))
    error = assert_openai_error(response, 400, param=param)
    assert error["type"] == "invalid_request_error"


async def test_missing_messages_is_400(client: AsyncTestClient) -> None:
    response = await client.post("/v1/chat/completions", json={"model": BASE})
    assert_openai_error(response, 400, param="messages")


async def test_response_format_json_schema_without_schema_is_400(client: AsyncTestClient) -> None:
    body = chat_body(response_format={"type": "json_schema", "json_schema": {"name": "answer"}})
    error = assert_openai_error(await client.post("/v1/chat/completions", json=body), 400)
    assert error["param"] is not None and error["param"].startswith("response_format")
    assert "schema" in error["message"]


async def test_top_logprobs_without_logprobs_names_top_logprobs(client: AsyncTestClient) -> None:
    response = await client.post("/v1/chat/completions", json=chat_body(top_logprobs=2))
    assert_openai_error(response, 400, param="top_logprobs")


async def test_top_logprobs_without_logprobs_is_400(client: AsyncTestClient) -> None:
    response = await client.post("/v1/chat/completions", json=chat_body(top_logprobs=2))
    error = assert_openai_error(response, 400)
    assert "top_logprobs" in error["message"]


async def test_stream_options_without_stream_names_stream_options(client: AsyncTestClient) -> None:
    response = await client.post("/v1/chat/completions", json=chat_body(stream_options={"include_usage": True}))
    assert_openai_error(response, 400, param="stream_options")


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
async def test_stream_options_without_stream_is_400(client: AsyncTestClient, path: str) -> None:
    body = chat_body() if "chat" in path else {"model": BASE, "prompt": "hi"}
    response = await client.post(path, json={**body, "stream_options": {"include_usage": True}})
    error = assert_openai_error(response, 400)
    assert "stream_options" in error["message"]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
async def test_malformed_json_body_is_400(client: AsyncTestClient, path: str) -> None:
    response = await client.post(path, content=b'{"model": "synth", ', headers={"content-type": "application/json"})
    assert_openai_error(response, 400)


async def test_unknown_extra_fields_are_ignored(client: AsyncTestClient) -> None:
    body = chat_body(max_tokens=3, not_an_openai_field={"x": 1}, another=[1, 2])
    response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["finish_reason"] == "length"


COMPLETION_INVALID = [
    pytest.param({"prompt": []}, "prompt", id="empty-prompt-list"),
    pytest.param({"logprobs": 21}, "logprobs", id="logprobs>20"),
    pytest.param({"max_tokens": 0}, "max_tokens", id="max_tokens=0"),
    pytest.param({"temperature": 5}, "temperature", id="temperature=5"),
    pytest.param({"prompt": [0, 1, 9999]}, "prompt", id="token-out-of-vocab"),
    pytest.param({"prompt": [[104, 105], []]}, "prompt", id="empty-token-prompt-in-batch"),
]


@pytest.mark.parametrize(("extra", "param"), COMPLETION_INVALID)
async def test_completion_invalid_parameter_is_400(client: AsyncTestClient, extra: dict[str, Any], param: str) -> None:
    response = await client.post("/v1/completions", json={"model": BASE, "prompt": "hi", **extra})
    assert_openai_error(response, 400, param=param)


# -- models ------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_unknown_model_is_404_model_not_found(client: AsyncTestClient, stream: bool) -> None:
    response = await client.post("/v1/chat/completions", json=chat_body(model="no-such-model", stream=stream))
    error = assert_openai_error(response, 404, param="model", code="model_not_found")
    assert "no-such-model" in error["message"]


async def test_unknown_model_in_completions_is_404(client: AsyncTestClient) -> None:
    response = await client.post("/v1/completions", json={"model": "no-such-model", "prompt": "hi"})
    assert_openai_error(response, 404, param="model", code="model_not_found")


# -- unsupported features ----------------------------------------------------------------------


async def test_non_text_content_part_is_400(client: AsyncTestClient) -> None:
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this image?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
            ],
        }
    ]
    response = await client.post("/v1/chat/completions", json=chat_body(messages=messages))
    error = assert_openai_error(response, 400)
    assert error["param"] is not None and error["param"].startswith("messages[0].content")


async def test_tools_with_tool_choice_auto_is_400(client: AsyncTestClient) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    response = await client.post("/v1/chat/completions", json=chat_body(tools=tools, tool_choice="auto"))
    assert_openai_error(response, 400, param="tools")


async def test_tools_with_tool_choice_none_are_ignored(client: AsyncTestClient) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    body = chat_body(tools=tools, tool_choice="none", max_tokens=4)
    response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(("extra", "param"), [({"suffix": "end"}, "suffix"), ({"best_of": 3}, "best_of")])
async def test_completion_unsupported_options_are_400(client: AsyncTestClient, extra: dict[str, Any], param: str) -> None:
    response = await client.post("/v1/completions", json={"model": BASE, "prompt": "hi", **extra})
    assert_openai_error(response, 400, param=param)


# -- context length ----------------------------------------------------------------------------


async def _chat_overhead(engine: SyntheticEngine) -> int:
    """Prompt tokens of a one-message chat whose user content is empty."""
    return len((await engine.render_chat([ChatMessage(role="user", content="")])).token_ids)


async def test_prompt_as_long_as_the_context_is_400(client: AsyncTestClient, engine: SyntheticEngine) -> None:
    content = "x" * (MAX_MODEL_LEN - await _chat_overhead(engine))
    body = chat_body(messages=[{"role": "user", "content": content}])
    error = assert_openai_error(await client.post("/v1/chat/completions", json=body), 400, param="messages")
    assert str(MAX_MODEL_LEN) in error["message"]


async def test_prompt_one_token_short_of_the_context_generates_one_token(
    client: AsyncTestClient, engine: SyntheticEngine
) -> None:
    content = "x" * (MAX_MODEL_LEN - 1 - await _chat_overhead(engine))
    response = await client.post("/v1/chat/completions", json=chat_body(messages=[{"role": "user", "content": content}]))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["usage"] == {"prompt_tokens": MAX_MODEL_LEN - 1, "completion_tokens": 1, "total_tokens": MAX_MODEL_LEN}
    assert body["choices"][0]["finish_reason"] == "length"


async def test_token_prompt_as_long_as_the_context_is_400(client: AsyncTestClient) -> None:
    body = {"model": BASE, "prompt": [120] * MAX_MODEL_LEN}
    assert_openai_error(await client.post("/v1/completions", json=body), 400, param="prompt")


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
async def test_max_tokens_beyond_the_context_is_400(client: AsyncTestClient, field: str, stream: bool) -> None:
    body = chat_body(**{field: MAX_MODEL_LEN + 1}, stream=stream)
    assert_openai_error(await client.post("/v1/chat/completions", json=body), 400, param="max_tokens")


async def test_max_tokens_beyond_the_room_left_is_clamped(client: AsyncTestClient) -> None:
    response = await client.post("/v1/chat/completions", json=chat_body(max_tokens=MAX_MODEL_LEN))
    assert response.status_code == 200, response.text
    body = response.json()
    prompt_tokens = body["usage"]["prompt_tokens"]
    assert body["usage"]["completion_tokens"] == MAX_MODEL_LEN - prompt_tokens
    assert body["usage"]["total_tokens"] == MAX_MODEL_LEN
    assert body["choices"][0]["finish_reason"] == "length"
    assert len(body["choices"][0]["message"]["content"]) == MAX_MODEL_LEN - prompt_tokens  # one byte per token


# -- engine failures -----------------------------------------------------------------------------


class FailingEngine(SyntheticEngine):
    """A synthetic engine whose requests fail with ``error`` after ``fail_after`` outputs."""

    def __init__(self, *, fail_after: int, error: LoragateError, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fail_after = fail_after
        self.error = error

    async def generate(self, request, adapter) -> AsyncIterator[Any]:  # type: ignore[override]
        outputs = super().generate(request, adapter)
        try:
            count = 0
            async for out in outputs:
                yield out
                count += 1
                if count >= self.fail_after:
                    raise self.error
        finally:
            await outputs.aclose()


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (EngineError("The engine failed this request."), None),
        (EngineDeadError("The engine died; the server must be restarted."), "engine_dead"),
    ],
)
async def test_error_after_chat_stream_started_is_an_error_event_then_done(error: LoragateError, code: Any) -> None:
    engine = FailingEngine(name=BASE, max_model_len=MAX_MODEL_LEN, fail_after=3, error=error)
    async with AsyncTestClient(make_app(engine)) as client:
        response = await client.post("/v1/chat/completions", json=chat_body(max_tokens=50, stream=True))
    assert response.status_code == 200
    payloads = sse_payloads(response.content)  # checks `data: ` framing and the final [DONE]
    *chunks, last = payloads
    assert last == {"error": {"message": error.message, "type": "server_error", "param": None, "code": code}}
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks) != ""  # some text came first
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks)
    assert engine.num_unfinished_requests() == 0


async def test_error_after_completion_stream_started_is_an_error_event_then_done() -> None:
    error = EngineError("The engine failed this request.")
    engine = FailingEngine(name=BASE, max_model_len=MAX_MODEL_LEN, fail_after=2, error=error)
    async with AsyncTestClient(make_app(engine)) as client:
        body = {"model": BASE, "prompt": ["one", "two"], "max_tokens": 50, "stream": True}
        response = await client.post("/v1/completions", json=body)
    assert response.status_code == 200
    events = sse_events(response.content)
    assert events[-1] == b"data: [DONE]"
    payloads = sse_payloads(response.content)
    assert payloads[-1]["error"]["message"] == error.message
    assert all("choices" in p for p in payloads[:-1])
    assert engine.num_unfinished_requests() == 0


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
async def test_engine_error_during_a_non_streaming_request_is_500(path: str) -> None:
    engine = FailingEngine(name=BASE, max_model_len=MAX_MODEL_LEN, fail_after=3, error=EngineError("boom"))
    async with AsyncTestClient(make_app(engine)) as client:
        body = chat_body(max_tokens=50) if "chat" in path else {"model": BASE, "prompt": "hi", "max_tokens": 50}
        response = await client.post(path, json=body)
    error = assert_openai_error(response, 500)
    assert error["message"] == "boom" and error["type"] == "server_error"
    assert engine.num_unfinished_requests() == 0


@pytest.mark.parametrize("engine_kwargs", [{"token_interval": 0.01}])
async def test_engine_dying_mid_stream_over_http(synthetic_server: SyntheticServer) -> None:
    engine = synthetic_server.engine
    async with httpx.AsyncClient(base_url=synthetic_server.base_url, timeout=5) as client:
        async with client.stream("POST", "/v1/chat/completions", json=chat_body(max_tokens=400, stream=True)) as response:
            reader = EventReader(response)
            assert len(await reader.take(2)) == 2
            engine.dead = True
            rest = await reader.take(1000)
    assert rest[-1] == b"data: [DONE]"
    assert rest[-2].startswith(b"data: ")
    error = json.loads(rest[-2][len(b"data: ") :])["error"]
    assert error["code"] == "engine_dead" and error["type"] == "server_error"
    assert engine.num_unfinished_requests() == 0


async def test_dead_engine_before_the_request_is_503(client: AsyncTestClient, engine: SyntheticEngine) -> None:
    engine.dead = True
    for stream in (False, True):
        response = await client.post("/v1/chat/completions", json=chat_body(stream=stream))
        assert_openai_error(response, 503, code="engine_dead")
    assert (await client.get("/health")).status_code == 503


@pytest.mark.parametrize(("method", "path", "status"), [("POST", "/v1/embeddings", 404), ("GET", "/v1/chat/completions", 405)])
async def test_routing_errors_are_in_openai_shape(client: AsyncTestClient, method: str, path: str, status: int) -> None:
    assert_openai_error(await client.request(method, path, json={"model": BASE}), status)


async def test_adapter_model_is_accepted(client: AsyncTestClient) -> None:
    response = await client.post("/v1/chat/completions", json=chat_body(model=ADAPTER, max_tokens=2))
    assert response.status_code == 200, response.text
