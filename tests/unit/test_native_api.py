"""The LoRAX native API on the synthetic engine: response shapes and key order, finish reasons,
sampling and seeds, details/prefill/alternatives/best_of, truncate, adapters, headers, /info,
/tokenize, health aliases, routing errors and the OpenAPI document.

Shapes: shared/reference/lorax-api.md §1, §2.7, §2.8, §4. "Hello" is 6 prompt tokens on the
synthetic engine (``<s>`` + one token per byte); every generated token has logprob -0.25."""

from __future__ import annotations

from typing import Any, AsyncIterator

import pytest
import pytest_asyncio
from litestar.testing import AsyncTestClient

from app.engine.synthetic import BOS_ID, EOS_ID, SyntheticEngine
from app.errors import EngineError
from tests.unit.conftest import ADAPTER, BASE, MAX_MODEL_LEN, make_app

DETAILS_KEYS = ["finish_reason", "prompt_tokens", "generated_tokens", "skipped_tokens", "seed", "prefill", "tokens"]
TOKEN_KEYS = ["id", "text", "logprob", "special", "skipped"]
TOKEN_KEYS_WITH_ALTERNATIVES = ["id", "text", "logprob", "special", "alternative_tokens", "skipped"]

# One app (and event loop) for the module's tests on the default engine; tests that need another
# engine, or change it, build their own with `fresh`.
pytestmark = pytest.mark.asyncio(loop_scope="module")


def fresh(engine: SyntheticEngine | None = None, **engine_kwargs: Any) -> AsyncTestClient:
    return AsyncTestClient(make_app(engine or SyntheticEngine(name=BASE, max_model_len=MAX_MODEL_LEN, **engine_kwargs)))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client() -> AsyncIterator[AsyncTestClient]:
    async with fresh() as c:
        yield c


async def generate(client: AsyncTestClient, inputs: str = "Hello", path: str = "/generate", **params: Any) -> dict[str, Any]:
    """POST a native request; return the ``GenerateResponse`` (unwrapped from ``POST /``'s list)."""
    response = await client.post(path, json={"inputs": inputs, "parameters": params})
    assert response.status_code == 200, response.text
    body = response.json()
    if path in ("/", "/invocations"):
        assert isinstance(body, list) and len(body) == 1, body
        body = body[0]
    return body


async def details(client: AsyncTestClient, inputs: str = "Hello", **params: Any) -> dict[str, Any]:
    return (await generate(client, inputs, details=True, **params))["details"]


# -- routes and envelopes ------------------------------------------------------------------------


async def test_compat_route_returns_a_list_with_one_response(client: AsyncTestClient) -> None:
    response = await client.post("/", json={"inputs": "Hello", "parameters": {"max_new_tokens": 4}})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == [{"generated_text": (await generate(client, max_new_tokens=4))["generated_text"]}]


async def test_generate_returns_the_object(client: AsyncTestClient) -> None:
    response = await client.post("/generate", json={"inputs": "Hello", "parameters": {"max_new_tokens": 4}})
    body = response.json()
    assert isinstance(body, dict) and list(body) == ["generated_text"]
    assert isinstance(body["generated_text"], str) and len(body["generated_text"]) == 4  # one byte per token


async def test_invocations_is_the_compat_route(client: AsyncTestClient) -> None:
    request = {"inputs": "Hello", "parameters": {"max_new_tokens": 6, "details": True}}
    compat = await client.post("/", json=request)
    invocations = await client.post("/invocations", json=request)
    assert invocations.status_code == 200, invocations.text
    assert invocations.json() == compat.json()


async def test_stream_false_on_compat_route_is_not_a_stream(client: AsyncTestClient) -> None:
    response = await client.post("/", json={"inputs": "Hello", "parameters": {"max_new_tokens": 2}, "stream": False})
    assert response.headers["content-type"].startswith("application/json")
    assert isinstance(response.json(), list)


@pytest.mark.parametrize("body", [{"inputs": "Hello"}, {"inputs": "Hello", "parameters": None}, {"inputs": "Hello", "parameters": {}}])
async def test_parameters_missing_or_null_mean_defaults(client: AsyncTestClient, body: dict[str, Any]) -> None:
    response = await client.post("/generate", json=body)
    assert response.status_code == 200, response.text
    assert list(response.json()) == ["generated_text"]
    # max_new_tokens defaults to the room left in the context.
    assert response.headers["x-generated-tokens"] == str(MAX_MODEL_LEN - 6)


async def test_unknown_fields_are_ignored(client: AsyncTestClient) -> None:
    body = {"inputs": "Hello", "parameters": {"max_new_tokens": 2, "apply_chat_template": False, "whatever": 1}, "extra": []}
    assert (await client.post("/generate", json=body)).status_code == 200


# -- details ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "has_details"),
    [({}, False), ({"details": False}, False), ({"details": True}, True), ({"decoder_input_details": True}, True)],
    ids=["default", "details=false", "details=true", "decoder_input_details"],
)
@pytest.mark.parametrize("path", ["/generate", "/"])
async def test_details_only_when_asked(client: AsyncTestClient, params: dict[str, Any], has_details: bool, path: str) -> None:
    body = await generate(client, path=path, max_new_tokens=3, **params)
    assert list(body) == (["generated_text", "details"] if has_details else ["generated_text"])


async def test_details_and_token_key_order(client: AsyncTestClient) -> None:
    d = await details(client, max_new_tokens=3)
    assert list(d) == DETAILS_KEYS
    assert len(d["tokens"]) == 3
    for token in d["tokens"]:
        assert list(token) == TOKEN_KEYS
        assert token["skipped"] is False and token["special"] is False
    assert d["skipped_tokens"] == 0 and d["prefill"] == []


async def test_details_tokens_spell_the_generated_text(client: AsyncTestClient) -> None:
    body = await generate(client, max_new_tokens=8, details=True)
    tokens = body["details"]["tokens"]
    assert "".join(t["text"] for t in tokens) == body["generated_text"]
    assert [t["id"] for t in tokens] == list(body["generated_text"].encode())
    assert body["details"]["generated_tokens"] == 8 and body["details"]["prompt_tokens"] == 6


class NoLogprobEngine(SyntheticEngine):
    """An engine that reports no logprobs (as when the backend computes none)."""

    async def generate(self, request, adapter) -> AsyncIterator[Any]:  # type: ignore[override]
        async for out in super().generate(request, adapter):
            for d in out.deltas:
                d.logprobs = None
            yield out


@pytest.mark.parametrize("engine_cls", [SyntheticEngine, NoLogprobEngine])
async def test_generated_token_logprob_is_never_null(engine_cls: type[SyntheticEngine]) -> None:
    async with fresh(engine_cls(name=BASE, max_model_len=MAX_MODEL_LEN, eos_after=4)) as client:
        d = await details(client, max_new_tokens=10)
    assert len(d["tokens"]) == 5  # 4 + EOS
    assert all(isinstance(t["logprob"], float) for t in d["tokens"]), d["tokens"]


# -- finish reasons --------------------------------------------------------------------------------


async def test_finish_reason_length(client: AsyncTestClient) -> None:
    d = await details(client, max_new_tokens=5)
    assert (d["finish_reason"], d["generated_tokens"]) == ("length", 5)


async def test_finish_reason_eos_token() -> None:
    async with fresh(eos_after=3) as client:
        body = await generate(client, max_new_tokens=20, details=True)
    d = body["details"]
    assert d["finish_reason"] == "eos_token"
    assert d["generated_tokens"] == 4
    last = d["tokens"][-1]
    assert (last["id"], last["text"], last["special"]) == (EOS_ID, "</s>", True)
    assert not any(t["special"] for t in d["tokens"][:-1])
    assert body["generated_text"] == "".join(t["text"] for t in d["tokens"][:-1])  # no "</s>"


async def test_ignore_eos_token() -> None:
    async with fresh(eos_after=3) as client:
        d = await details(client, max_new_tokens=6, ignore_eos_token=True)
    assert (d["finish_reason"], d["generated_tokens"]) == ("length", 6)


async def test_finish_reason_stop_sequence_keeps_the_stop_text(client: AsyncTestClient) -> None:
    text = (await generate(client, max_new_tokens=20))["generated_text"]
    stop = text[5:8]
    assert stop not in text[:7], "pick a stop that first occurs at 5"
    body = await generate(client, max_new_tokens=20, stop=[stop, "zzzz"], details=True)
    assert body["generated_text"] == text[:8]
    assert body["generated_text"].endswith(stop)
    assert body["details"]["finish_reason"] == "stop_sequence"
    assert body["details"]["generated_tokens"] == 8


# -- greedy, sampling and seeds --------------------------------------------------------------------


async def test_greedy_by_default(client: AsyncTestClient) -> None:
    first = await generate(client, max_new_tokens=12, details=True)
    second = await generate(client, max_new_tokens=12, details=True)
    assert first["details"]["seed"] is None
    assert first["generated_text"] == second["generated_text"]


async def test_sampling_reports_the_seed_it_used(client: AsyncTestClient) -> None:
    body = await generate(client, max_new_tokens=20, do_sample=True, details=True)
    seed = body["details"]["seed"]
    assert isinstance(seed, int) and seed >= 0
    replay = await generate(client, max_new_tokens=20, do_sample=True, seed=seed, details=True)
    assert replay["generated_text"] == body["generated_text"]


async def test_sampling_with_a_seed_is_reproducible(client: AsyncTestClient) -> None:
    first = await generate(client, max_new_tokens=20, do_sample=True, seed=7, details=True)
    second = await generate(client, max_new_tokens=20, do_sample=True, seed=7, details=True)
    other = await generate(client, max_new_tokens=20, do_sample=True, seed=8, details=True)
    assert first["details"]["seed"] == second["details"]["seed"] == 7
    assert first["generated_text"] == second["generated_text"]
    assert other["generated_text"] != first["generated_text"]


@pytest.mark.parametrize("params", [{"temperature": 0.7}, {"top_k": 5}, {"top_p": 0.9}], ids=repr)
async def test_sampling_parameters_imply_sampling(client: AsyncTestClient, params: dict[str, Any]) -> None:
    assert isinstance((await details(client, max_new_tokens=2, **params))["seed"], int)


async def test_seed_without_sampling_is_not_reported(client: AsyncTestClient) -> None:
    body = await generate(client, max_new_tokens=12, seed=7, details=True)
    assert body["details"]["seed"] is None
    assert body["generated_text"] == (await generate(client, max_new_tokens=12))["generated_text"]


# -- return_full_text, prefill, alternatives, best_of, truncate ------------------------------------


@pytest.mark.parametrize("path", ["/generate", "/"])
async def test_return_full_text_prepends_inputs(client: AsyncTestClient, path: str) -> None:
    plain = (await generate(client, path=path, max_new_tokens=5))["generated_text"]
    full = (await generate(client, path=path, max_new_tokens=5, return_full_text=True))["generated_text"]
    assert full == "Hello" + plain


async def test_decoder_input_details_fills_prefill(client: AsyncTestClient) -> None:
    d = (await generate(client, max_new_tokens=2, decoder_input_details=True))["details"]
    prefill = d["prefill"]
    assert len(prefill) == d["prompt_tokens"] == 6
    assert [p["id"] for p in prefill] == [BOS_ID, *b"Hello"]
    assert [p["text"] for p in prefill] == ["<s>", "H", "e", "l", "l", "o"]
    assert all(list(p) == ["id", "text", "logprob"] for p in prefill)
    assert prefill[0]["logprob"] is None
    assert all(isinstance(p["logprob"], float) for p in prefill[1:])


async def test_return_k_alternatives(client: AsyncTestClient) -> None:
    d = await details(client, max_new_tokens=3, return_k_alternatives=2)
    for token in d["tokens"]:
        assert list(token) == TOKEN_KEYS_WITH_ALTERNATIVES
        alternatives = token["alternative_tokens"]
        assert len(alternatives) == 2
        assert all(list(a) == ["id", "text", "logprob"] for a in alternatives)
        assert alternatives[0]["id"] == token["id"]  # the chosen token is the best (greedy)
        assert all(isinstance(a["logprob"], float) for a in alternatives)


class RankedEngine(SyntheticEngine):
    """Sequence ``index`` 1 gets much better logprobs than sequence 0."""

    async def generate(self, request, adapter) -> AsyncIterator[Any]:  # type: ignore[override]
        async for out in super().generate(request, adapter):
            for d in out.deltas:
                for lp in d.logprobs or []:
                    lp.logprob = -0.1 if d.index == 1 else -3.0
            yield out


async def test_best_of_returns_the_sequence_with_the_best_mean_logprob() -> None:
    async with fresh(RankedEngine(name=BASE, max_model_len=MAX_MODEL_LEN)) as client:
        d = await details(client, max_new_tokens=6, best_of=2, do_sample=True)
    assert list(d) == [*DETAILS_KEYS, "best_of_sequences"]
    [other] = d["best_of_sequences"]
    assert list(other) == ["generated_text", "finish_reason", "generated_tokens", "seed", "prefill", "tokens"]

    def mean(tokens: list[dict[str, Any]]) -> float:
        return sum(t["logprob"] for t in tokens) / len(tokens)

    assert mean(d["tokens"]) > mean(other["tokens"])
    assert mean(d["tokens"]) == pytest.approx(-0.1)
    assert isinstance(d["seed"], int) and isinstance(other["seed"], int) and d["seed"] != other["seed"]
    assert other["generated_tokens"] == len(other["tokens"]) == 6


async def test_best_of_response_text_is_the_best_sequence(client: AsyncTestClient) -> None:
    body = await generate(client, max_new_tokens=6, best_of=2, do_sample=True, details=True)
    d = body["details"]
    assert body["generated_text"] == "".join(t["text"] for t in d["tokens"])
    assert len(d["best_of_sequences"]) == 1
    other = d["best_of_sequences"][0]
    assert other["generated_text"] == "".join(t["text"] for t in other["tokens"])


async def test_best_of_1_has_no_best_of_sequences(client: AsyncTestClient) -> None:
    assert "best_of_sequences" not in await details(client, max_new_tokens=2, best_of=1)


async def test_truncate_keeps_the_last_input_tokens(client: AsyncTestClient) -> None:
    response = await client.post(
        "/generate", json={"inputs": "Hello", "parameters": {"max_new_tokens": 2, "truncate": 3, "decoder_input_details": True}}
    )
    d = response.json()["details"]
    assert d["prompt_tokens"] == 3
    assert [p["id"] for p in d["prefill"]] == list(b"llo")
    assert response.headers["x-prompt-tokens"] == "3"


async def test_truncate_longer_than_the_input_changes_nothing(client: AsyncTestClient) -> None:
    assert (await details(client, max_new_tokens=2, truncate=100))["prompt_tokens"] == 6


# -- adapters --------------------------------------------------------------------------------------


async def test_adapter_changes_the_output(client: AsyncTestClient) -> None:
    base = (await generate(client, max_new_tokens=20))["generated_text"]
    adapted = (await generate(client, max_new_tokens=20, adapter_id=ADAPTER))["generated_text"]
    assert adapted != base


@pytest.mark.parametrize("adapter_id", ["", None])
async def test_empty_or_null_adapter_id_is_the_base_model(client: AsyncTestClient, adapter_id: str | None) -> None:
    base = (await generate(client, max_new_tokens=20))["generated_text"]
    response = await client.post("/generate", json={"inputs": "Hello", "parameters": {"max_new_tokens": 20, "adapter_id": adapter_id}})
    assert response.json()["generated_text"] == base
    assert "x-adapter-id" not in response.headers and "x-adapter-source" not in response.headers


@pytest.mark.parametrize("path", ["/generate", "/"])
async def test_unknown_adapter_is_424_generation_error(client: AsyncTestClient, path: str) -> None:
    response = await client.post(path, json={"inputs": "Hello", "parameters": {"adapter_id": "no-such-adapter"}})
    assert response.status_code == 424, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert list(body) == ["error", "error_type"]
    assert body["error_type"] == "generation"
    assert body["error"].startswith("Request failed during generation: ")
    assert "no-such-adapter" in body["error"]


class FailingEngine(SyntheticEngine):
    """Fails every request with an :class:`EngineError` after two outputs."""

    async def generate(self, request, adapter) -> AsyncIterator[Any]:  # type: ignore[override]
        count = 0
        async for out in super().generate(request, adapter):
            yield out
            count += 1
            if count == 2:
                raise EngineError("boom")


async def test_engine_failure_is_424_generation_error() -> None:
    engine = FailingEngine(name=BASE, max_model_len=MAX_MODEL_LEN)
    async with fresh(engine) as client:
        response = await client.post("/generate", json={"inputs": "Hello", "parameters": {"max_new_tokens": 10}})
    assert response.status_code == 424, response.text
    assert response.json() == {"error": "Request failed during generation: boom", "error_type": "generation"}
    assert engine.num_unfinished_requests() == 0


class EndsEarlyEngine(SyntheticEngine):
    """Its output stream ends after one token without a finish reason (an incomplete generation)."""

    async def generate(self, request, adapter) -> AsyncIterator[Any]:  # type: ignore[override]
        async for out in super().generate(request, adapter):
            yield out
            return


async def test_incomplete_generation_is_500() -> None:
    async with fresh(EndsEarlyEngine(name=BASE, max_model_len=MAX_MODEL_LEN)) as client:
        response = await client.post("/generate", json={"inputs": "Hello", "parameters": {"max_new_tokens": 10}})
    assert response.status_code == 500, response.text
    assert response.json() == {"error": "Incomplete generation", "error_type": "incomplete_generation"}


class CrashingEngine(SyntheticEngine):
    """Raises an unexpected (non-loragate) exception after the first output."""

    async def generate(self, request, adapter) -> AsyncIterator[Any]:  # type: ignore[override]
        async for out in super().generate(request, adapter):
            yield out
            raise RuntimeError("unexpected failure in /srv/secret/module.py")


@pytest.mark.parametrize("path", ["/generate", "/"])
async def test_unexpected_engine_exception_is_a_lorax_error(path: str) -> None:
    async with fresh(CrashingEngine(name=BASE, max_model_len=MAX_MODEL_LEN)) as client:
        response = await client.post(path, json={"inputs": "Hello", "parameters": {"max_new_tokens": 10}})
        stream = await client.post("/generate_stream", json={"inputs": "Hello", "parameters": {"max_new_tokens": 10}})
    stream_error = stream.content.rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
    assert stream_error == (
        b'data:{"error":"Request failed during generation: Internal error while generating.","error_type":"generation"}'
    )
    assert response.status_code == 424, response.text
    assert response.json() == {
        "error": "Request failed during generation: Internal error while generating.",
        "error_type": "generation",
    }
