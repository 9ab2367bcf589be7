"""LoRAX native streams (``/generate_stream`` and ``POST /`` with ``"stream": true``): axum's byte
framing, one event per token, the final event, stream headers, errors after the start, and
lorax-client 0.6.3 (sync and async) parsing the app served by uvicorn.

Framing: shared/reference/lorax-api.md §2.9 and §5.3."""

from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator

import httpx
import lorax
import lorax.errors
import pytest
import pytest_asyncio
from litestar.testing import AsyncTestClient

from app.engine.synthetic import EOS_ID, SyntheticEngine
from app.errors import EngineError
from tests.unit.conftest import ADAPTER, BASE, MAX_MODEL_LEN, EventReader, SyntheticServer, make_app, serve, sse_events
from tests.unit.test_native_api import EndsEarlyEngine

STREAM_DETAILS_KEYS = ["finish_reason", "prompt_tokens", "generated_tokens", "seed"]

# Apps and servers on unchanged engines are shared by the module's tests (one event loop for the
# module); tests that need another engine, or change it, build their own.
pytestmark = pytest.mark.asyncio(loop_scope="module")


def synthetic(**engine_kwargs: Any) -> SyntheticEngine:
    return SyntheticEngine(name=BASE, max_model_len=MAX_MODEL_LEN, **engine_kwargs)


def fresh(engine: SyntheticEngine | None = None, **engine_kwargs: Any) -> AsyncTestClient:
    return AsyncTestClient(make_app(engine or synthetic(**engine_kwargs)))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client() -> AsyncIterator[AsyncTestClient]:
    async with fresh() as c:
        yield c


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=[1, 3], ids=["1-per-step", "3-per-step"])
async def stepped(request: pytest.FixtureRequest) -> AsyncIterator[AsyncTestClient]:
    """The app on an engine whose outputs carry ``request.param`` tokens each."""
    async with fresh(tokens_per_step=request.param) as c:
        yield c


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server() -> AsyncIterator[SyntheticServer]:
    """The app under uvicorn on 127.0.0.1, for lorax-client."""
    async with serve(synthetic()) as live:
        yield live


def native_payloads(body: bytes) -> list[dict[str, Any]]:
    """The JSON payloads of a native SSE body, checking axum's framing: every event is exactly one
    ``data:{...}`` line (no space after the colon, no ``event:``/``id:`` lines), never ``[DONE]``."""
    assert b"\r" not in body
    events = sse_events(body)
    for event in events:
        assert event.startswith(b"data:{"), f"not a `data:{{` event: {event[:80]!r}"
        assert b"\n" not in event, f"multi-line event: {event[:80]!r}"
    assert b"[DONE]" not in body
    return [json.loads(event[len(b"data:") :]) for event in events]


async def stream(client: AsyncTestClient, inputs: str = "Hello", path: str = "/generate_stream", **params: Any) -> list[dict[str, Any]]:
    body: dict[str, Any] = {"inputs": inputs, "parameters": params}
    if path == "/":
        body["stream"] = True
    response = await client.post(path, json=body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return native_payloads(response.content)


async def whole(client: AsyncTestClient, inputs: str = "Hello", **params: Any) -> dict[str, Any]:
    response = await client.post("/generate", json={"inputs": inputs, "parameters": {**params, "details": True}})
    assert response.status_code == 200, response.text
    return response.json()


# -- framing and events ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/generate_stream", "/"])
async def test_one_event_per_token(stepped: AsyncTestClient, path: str) -> None:
    events = await stream(stepped, path=path, max_new_tokens=5)
    assert len(events) == 5
    assert all(list(e) == ["token", "generated_text", "details"] for e in events)
    assert all(list(e["token"]) == ["id", "text", "logprob", "special", "skipped"] for e in events)
    assert all(isinstance(e["token"]["logprob"], float) and e["token"]["skipped"] is False for e in events)


async def test_exact_bytes_of_intermediate_events(client: AsyncTestClient) -> None:
    response = await client.post("/generate_stream", json={"inputs": "Hello", "parameters": {"max_new_tokens": 3}})
    events = sse_events(response.content)
    token = json.loads(events[0][len(b"data:") :])["token"]
    expected = (
        b'data:{"token":{"id":%d,"text":"%s","logprob":-0.25,"special":false,"skipped":false},'
        b'"generated_text":null,"details":null}' % (token["id"], token["text"].encode())
    )
    assert events[0] == expected
    assert response.content.endswith(b"}\n\n")


async def test_intermediate_events_have_explicit_nulls(stepped: AsyncTestClient) -> None:
    events = await stream(stepped, max_new_tokens=7, details=True)
    for event in events[:-1]:
        assert event["generated_text"] is None and event["details"] is None
    assert events[-1]["generated_text"] is not None and events[-1]["details"] is not None


@pytest.mark.parametrize(
    "params",
    [
        pytest.param({"max_new_tokens": 9}, id="length"),
        pytest.param({"max_new_tokens": 9, "return_full_text": True}, id="return_full_text"),
        pytest.param({"max_new_tokens": 9, "adapter_id": ADAPTER}, id="adapter"),
        pytest.param({"max_new_tokens": 9, "do_sample": True, "seed": 11}, id="seeded-sampling"),
        pytest.param({"max_new_tokens": 30, "stop": ["y c"]}, id="stop-sequence"),
        pytest.param({"max_new_tokens": 9, "return_k_alternatives": 2}, id="alternatives"),
    ],
)
async def test_stream_matches_the_non_streaming_response(stepped: AsyncTestClient, params: dict[str, Any]) -> None:
    reference = await whole(stepped, **params)
    events = await stream(stepped, details=True, **params)
    assert events[-1]["generated_text"] == reference["generated_text"]
    assert [e["token"] for e in events] == reference["details"]["tokens"]
    d = reference["details"]
    assert events[-1]["details"] == {k: d[k] for k in STREAM_DETAILS_KEYS}


async def test_stop_sequence_is_kept_on_streams(client: AsyncTestClient) -> None:
    events = await stream(client, max_new_tokens=30, stop=["y c"], details=True)
    assert events[-1]["details"]["finish_reason"] == "stop_sequence"
    assert events[-1]["generated_text"] == "ery c"  # "Hello" continues with "ery client ..." on the synthetic engine


async def test_final_event_details_only_when_asked(client: AsyncTestClient) -> None:
    without = await stream(client, max_new_tokens=4)
    assert without[-1]["details"] is None
    assert isinstance(without[-1]["generated_text"], str) and len(without[-1]["generated_text"]) == 4
    with_details = await stream(client, max_new_tokens=4, details=True)
    details = with_details[-1]["details"]
    assert list(details) == STREAM_DETAILS_KEYS
    assert details == {"finish_reason": "length", "prompt_tokens": 6, "generated_tokens": 4, "seed": None}


async def test_sampled_stream_reports_its_seed(client: AsyncTestClient) -> None:
    assert (await stream(client, max_new_tokens=3, do_sample=True, seed=5, details=True))[-1]["details"]["seed"] == 5
    drawn = (await stream(client, max_new_tokens=3, do_sample=True, details=True))[-1]["details"]["seed"]
    assert isinstance(drawn, int)


async def test_eos_on_a_stream() -> None:
    async with fresh(eos_after=3) as client:
        events = await stream(client, max_new_tokens=20, details=True)
    assert len(events) == 4
    last = events[-1]
    assert (last["token"]["id"], last["token"]["text"], last["token"]["special"]) == (EOS_ID, "</s>", True)
    assert last["details"]["finish_reason"] == "eos_token"
    assert last["generated_text"] == "".join(e["token"]["text"] for e in events[:-1])


async def test_compat_route_stream_is_the_same_stream(client: AsyncTestClient) -> None:
    native = await stream(client, max_new_tokens=6, details=True)
    compat = await stream(client, path="/", max_new_tokens=6, details=True)
    assert compat == native


# -- headers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/generate_stream", "/"])
async def test_stream_headers(client: AsyncTestClient, path: str) -> None:
    body: dict[str, Any] = {"inputs": "héllo", "parameters": {"max_new_tokens": 2}, "stream": True}
    h = (await client.post(path, json=body)).headers
    assert h["content-type"].startswith("text/event-stream")
    assert h["x-accel-buffering"] == "no"
    assert h["x-compute-characters"] == "5"
    assert h["x-model-id"] == BASE
    assert h["x-compute-type"]
    assert "x-adapter-id" not in h and "x-adapter-source" not in h


async def test_stream_adapter_headers(client: AsyncTestClient) -> None:
    body = {"inputs": "Hello", "parameters": {"max_new_tokens": 2, "adapter_id": ADAPTER}}
    h = (await client.post("/generate_stream", json=body)).headers
    assert h["x-adapter-id"] == ADAPTER
    assert h["x-adapter-source"]


async def test_stream_adapter_headers_of_a_merge(client: AsyncTestClient) -> None:
    # The second id is unknown, so no merge is built (the stream is one error event); the headers
    # are sent before generation starts, as in LoRAX.
    merged = {"ids": [ADAPTER, "no-such-adapter"], "weights": [0.5, 0.5]}
    response = await client.post("/generate_stream", json={"inputs": "Hello", "parameters": {"merged_adapters": merged}})
    assert response.headers["x-adapter-id"] == f"{ADAPTER},no-such-adapter"
    assert response.headers["x-adapter-source"]


# -- errors after the stream started ---------------------------------------------------------------


class FailingEngine(SyntheticEngine):
    """Fails every request with an :class:`EngineError` after ``fail_after`` outputs."""

    def __init__(self, *, fail_after: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fail_after = fail_after

    async def generate(self, request, adapter) -> AsyncIterator[Any]:  # type: ignore[override]
        count = 0
        async for out in super().generate(request, adapter):
            yield out
            count += 1
            if count == self.fail_after:
                raise EngineError("boom")


@pytest.mark.parametrize("path", ["/generate_stream", "/"])
async def test_engine_failure_mid_stream_is_a_final_error_event(path: str) -> None:
    engine = FailingEngine(name=BASE, max_model_len=MAX_MODEL_LEN, fail_after=3)
    async with fresh(engine) as client:
        events = await stream(client, path=path, max_new_tokens=50)
    *tokens, error = events
    assert len(tokens) == 3
    assert all(e["generated_text"] is None for e in tokens)
    assert error == {"error": "Request failed during generation: boom", "error_type": "generation"}
    assert engine.num_unfinished_requests() == 0


async def test_engine_dying_mid_stream_over_http() -> None:
    engine = synthetic(token_interval=0.005)
    body = {"inputs": "Hello", "parameters": {"max_new_tokens": 400}}
    async with serve(engine) as live, httpx.AsyncClient(base_url=live.base_url, timeout=5) as client:
        async with client.stream("POST", "/generate_stream", json=body) as response:
            assert response.status_code == 200
            reader = EventReader(response)
            first = await reader.next()
            assert first is not None and first.startswith(b'data:{"token":')
            engine.dead = True
            rest = await reader.take(1000)
    assert rest, "the stream ended without an error event"
    assert all(e.startswith(b'data:{"token":') for e in rest[:-1])
    assert rest[-1].startswith(b"data:{")
    error = json.loads(rest[-1][len(b"data:") :])
    assert list(error) == ["error", "error_type"]
    assert error["error_type"] == "generation"
    assert engine.num_unfinished_requests() == 0


async def test_stream_that_ends_without_finishing_is_incomplete_generation() -> None:
    async with fresh(EndsEarlyEngine(name=BASE, max_model_len=MAX_MODEL_LEN)) as client:
        events = await stream(client, max_new_tokens=10)
    assert len(events) == 2 and "token" in events[0]
    assert events[-1] == {"error": "Incomplete generation", "error_type": "incomplete_generation"}


async def test_unknown_adapter_on_a_stream_is_one_generation_error_event(client: AsyncTestClient) -> None:
    [event] = await stream(client, adapter_id="no-such-adapter")
    assert list(event) == ["error", "error_type"]
    assert event["error_type"] == "generation"
    assert event["error"].startswith("Request failed during generation: ")


# -- lorax-client 0.6.3 ----------------------------------------------------------------------------


async def test_lorax_client_generate(server: SyntheticServer, client: AsyncTestClient) -> None:
    lorax_client = lorax.Client(server.base_url, timeout=10)
    response = await asyncio.to_thread(lorax_client.generate, "Hello", max_new_tokens=5)
    reference = await whole(client, max_new_tokens=5)
    assert response.generated_text == reference["generated_text"]
    assert response.details is not None  # the client asks for details by default
    assert response.details.finish_reason == lorax.types.FinishReason.Length
    assert response.details.generated_tokens == 5
    assert [t.id for t in response.details.tokens] == [t["id"] for t in reference["details"]["tokens"]]


async def test_lorax_client_generate_with_every_detail(server: SyntheticServer) -> None:
    client = lorax.Client(server.base_url, timeout=10)
    response = await asyncio.to_thread(
        client.generate,
        "Hello",
        adapter_id=ADAPTER,
        max_new_tokens=4,
        decoder_input_details=True,
        return_k_alternatives=2,
        return_full_text=True,
    )
    assert response.generated_text.startswith("Hello") and len(response.generated_text) == 9
    assert response.details is not None
    assert len(response.details.prefill) == 6 and response.details.prefill[0].logprob is None
    assert all(t.alternative_tokens is not None and len(t.alternative_tokens) == 2 for t in response.details.tokens)


async def test_lorax_client_best_of(server: SyntheticServer) -> None:
    client = lorax.Client(server.base_url, timeout=10)
    response = await asyncio.to_thread(client.generate, "Hello", max_new_tokens=4, best_of=2, do_sample=True)
    assert response.details is not None and response.details.best_of_sequences is not None
    assert len(response.details.best_of_sequences) == 1
    assert isinstance(response.details.seed, int)


async def test_lorax_client_generate_stream() -> None:
    async with serve(synthetic(eos_after=2)) as live:
        client = lorax.Client(live.base_url, timeout=10)
        responses = await asyncio.to_thread(lambda: list(client.generate_stream("Hello", max_new_tokens=10)))
    assert len(responses) == 3
    assert all(r.generated_text is None and r.details is None for r in responses[:-1])
    last = responses[-1]
    assert last.token.special and last.token.text == "</s>"
    assert last.details is not None and last.details.finish_reason == lorax.types.FinishReason.EndOfSequenceToken
    assert last.generated_text == "".join(r.token.text for r in responses[:-1])


async def test_lorax_async_client(server: SyntheticServer) -> None:
    client = lorax.AsyncClient(server.base_url, timeout=10)
    response = await client.generate("Hello", max_new_tokens=6, adapter_id=ADAPTER)
    parts = [r async for r in client.generate_stream("Hello", max_new_tokens=6, adapter_id=ADAPTER)]
    assert len(parts) == 6
    assert parts[-1].generated_text == response.generated_text
    assert "".join(p.token.text for p in parts) == response.generated_text
    assert parts[-1].details is not None and parts[-1].details.generated_tokens == 6


FIVE_STOPS = ["a", "b", "c", "d", "e"]  # not checked by the client itself: only the server refuses it


async def test_lorax_client_server_validation_error(server: SyntheticServer) -> None:
    client = lorax.Client(server.base_url, timeout=10)
    expected = "Input validation error: `stop` supports up to 4 stop sequences. Given: 5"
    with pytest.raises(lorax.errors.ValidationError, match="supports up to 4") as info:
        await asyncio.to_thread(client.generate, "Hello", stop_sequences=FIVE_STOPS)
    assert str(info.value) == expected
    with pytest.raises(lorax.errors.ValidationError, match="supports up to 4"):
        await asyncio.to_thread(lambda: list(client.generate_stream("Hello", stop_sequences=FIVE_STOPS)))


async def test_lorax_client_unknown_adapter(server: SyntheticServer) -> None:
    client = lorax.Client(server.base_url, timeout=10)
    with pytest.raises(lorax.errors.GenerationError, match="^Request failed during generation"):
        await asyncio.to_thread(client.generate, "Hello", adapter_id="no-such-adapter")
    with pytest.raises(lorax.errors.GenerationError, match="^Request failed during generation"):
        await asyncio.to_thread(lambda: list(client.generate_stream("Hello", adapter_id="no-such-adapter")))


async def test_lorax_async_client_errors(server: SyntheticServer) -> None:
    client = lorax.AsyncClient(server.base_url, timeout=10)
    with pytest.raises(lorax.errors.ValidationError, match="supports up to 4"):
        await client.generate("Hello", stop_sequences=FIVE_STOPS)
    with pytest.raises(lorax.errors.ValidationError, match="supports up to 4"):
        [r async for r in client.generate_stream("Hello", stop_sequences=FIVE_STOPS)]
    with pytest.raises(lorax.errors.GenerationError):
        await client.generate("Hello", adapter_id="no-such-adapter")
    with pytest.raises(lorax.errors.GenerationError):
        [r async for r in client.generate_stream("Hello", adapter_id="no-such-adapter")]
