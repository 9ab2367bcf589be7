"""Hostile values inside well-formed bodies, in both dialects: odd text and lone surrogates, adapter names
that reach the file system, numbers no engine can hold, and routing errors."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from litestar.testing import AsyncTestClient

from app.engine.synthetic import SyntheticEngine
from tests.unit.conftest import ADAPTER, ADAPTER_ROOT, BASE, MAX_MODEL_LEN, serve, sse_events
from tests.unit.test_hostile_input import (  # noqa: F401 (`client` is a pytest fixture)
    client,
    assert_dialect_error,
    assert_served,
    GENERATING,
    is_openai,
    JSON,
    nested_lists,
    nested_objects,
    post_raw,
    raw_json,
    USER,
    VALID,
    with_field,
)


# -- odd but valid text: served, and echoed back intact -----------------------------------------

ODD_TEXT = [
    pytest.param("".join(chr(i) for i in range(1, 32)) + "\x7f", id="c0-controls"),
    pytest.param("\x00" * 8 + "hi\x00", id="nul-bytes"),
    pytest.param("".join(chr(i) for i in range(0x80, 0xA0)), id="c1-controls"),
    pytest.param("\u202e\u2066\u200b\ufeff\u2028\u2029", id="bidi-zero-width-separators"),
    pytest.param("\ufffe\uffff\U0010ffff\U0001f600", id="noncharacters-astral"),
    pytest.param('\n\ndata: [DONE]\n\nevent: error\r\ndata: {"error": "x"}\r\n\r\n', id="sse-injection"),
]


@pytest.mark.parametrize("text", ODD_TEXT)
async def test_odd_text_in_openai_prompts_is_served(client: AsyncTestClient, text: str) -> None:
    chat = {"model": BASE, "max_tokens": 3, "messages": [{"role": "system", "content": text},
                                                         {"role": "user", "content": [{"type": "text", "text": text}]}]}
    assert assert_served("/v1/chat/completions", await post_raw(client, "/v1/chat/completions", raw_json(chat)))
    stream = await post_raw(client, "/v1/chat/completions", raw_json({**chat, "stream": True, "stop": [text]}))
    assert assert_served("/v1/chat/completions", stream)[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    echo = {"model": BASE, "max_tokens": 3, "prompt": text, "echo": True}
    body = assert_served("/v1/completions", await post_raw(client, "/v1/completions", raw_json(echo)))
    assert body["choices"][0]["text"].startswith(text)  # the prompt comes back intact


@pytest.mark.parametrize("text", ODD_TEXT)
async def test_odd_text_in_lorax_inputs_is_served(client: AsyncTestClient, text: str) -> None:
    params = {"max_new_tokens": 3, "return_full_text": True, "stop": [text]}
    body = assert_served("/generate", await post_raw(client, "/generate", raw_json({"inputs": text, "parameters": params})))
    assert body["generated_text"].startswith(text)
    events = assert_served("/generate_stream", await post_raw(client, "/generate_stream",
                                                              raw_json({"inputs": text, "parameters": params})))
    assert events[-1]["generated_text"].startswith(text)
    spans = assert_served("/tokenize", await post_raw(client, "/tokenize", raw_json({"inputs": text})))
    assert all(0 <= s["start"] <= s["stop"] <= len(text) for s in spans)


LONE_SURROGATES = [
    pytest.param("\ud800", id="high"),
    pytest.param("\udfff", id="low"),
    pytest.param("\udc00\ud800", id="reversed-pair"),
    pytest.param("a\ud800\ud800b", id="two-highs"),
    pytest.param("hi\udbff", id="trailing-high"),
]


def surrogate_bodies(s: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        ("/v1/chat/completions", {"model": BASE, "max_tokens": 3, "messages": [{"role": "user", "content": s}]}),
        ("/v1/chat/completions", {"model": BASE, "max_tokens": 3, "messages": USER, "stop": [s]}),
        ("/v1/chat/completions", {"model": s, "messages": USER, "max_tokens": 3}),
        ("/v1/completions", {"model": BASE, "max_tokens": 3, "prompt": s, "echo": True}),
        ("/generate", {"inputs": s, "parameters": {"max_new_tokens": 3, "return_full_text": True}}),
        ("/generate_stream", {"inputs": s, "parameters": {"max_new_tokens": 3}}),
        ("/", {"inputs": "hi", "parameters": {"max_new_tokens": 3, "adapter_id": s}}),
        ("/tokenize", {"inputs": s}),
        ("/v1/load_lora_adapter", {"lora_name": s, "lora_path": s}),
    ]


@pytest.mark.parametrize("text", LONE_SURROGATES)
async def test_lone_surrogates_are_a_clear_4xx_or_served(client: AsyncTestClient, text: str) -> None:
    """JSON may escape a lone surrogate (``"\\ud800"``); no UTF-8 text can hold one."""
    for path, body in surrogate_bodies(text):
        response = await post_raw(client, path, raw_json(body))
        if response.status_code == 200:
            assert_served(path, response)
        else:
            assert_dialect_error(path, response)


# -- names that reach the file system -----------------------------------------------------------


@pytest.mark.parametrize("name", ["../x", "/etc", "..", "~", "a" * 4096, "\u202e\x07"],
                         ids=["dotdot-x", "etc", "dotdot", "tilde", "4096-chars", "bidi-bell"])
async def test_odd_adapter_names_are_4xx(client: AsyncTestClient, name: str) -> None:
    chat = await post_raw(client, "/v1/chat/completions",
                          raw_json({"model": name, "messages": USER, "max_tokens": 3, "adapter_source": "local"}))
    assert_dialect_error("/v1/chat/completions", chat)
    generate = await post_raw(client, "/generate",
                              raw_json({"inputs": "hi", "parameters": {"adapter_id": name, "adapter_source": "local"}}))
    # LoRAX reports adapter failures as generation errors (424).
    assert_dialect_error("/generate", generate, (422, 424))
    load = await post_raw(client, "/v1/load_lora_adapter", raw_json({"lora_name": "odd", "lora_path": name}))
    assert_dialect_error("/v1/load_lora_adapter", load)


@pytest.mark.parametrize("name", ["\x00", "lora-a\x00", "a\x00b", f"{ADAPTER_ROOT}/{ADAPTER}\x00"],
                         ids=["nul", "trailing-nul", "inner-nul", "absolute-path"])
@pytest.mark.parametrize("route", ["chat-model", "completion-model", "lorax-adapter_id", "lorax-merged_adapters",
                                   "load-lora_path"])
async def test_adapter_name_with_nul_byte_is_4xx(client: AsyncTestClient, route: str, name: str) -> None:
    path, body = {
        "chat-model": ("/v1/chat/completions", {"model": name, "messages": USER, "max_tokens": 3}),
        "completion-model": ("/v1/completions", {"model": name, "prompt": "hi", "max_tokens": 3}),
        "lorax-adapter_id": ("/generate", {"inputs": "hi", "parameters": {"adapter_id": name, "max_new_tokens": 3}}),
        "lorax-merged_adapters": ("/generate", {"inputs": "hi", "parameters": {
            "max_new_tokens": 3, "merged_adapters": {"ids": [name, ADAPTER], "weights": [0.5, 0.5]}}}),
        "load-lora_path": ("/v1/load_lora_adapter", {"lora_name": "nul", "lora_path": name if name.startswith("/")
                                                     else f"{ADAPTER_ROOT}/{name}"}),
    }[route]
    response = await post_raw(client, path, raw_json(body))
    # LoRAX: adapter failures are 424 "generation" errors, but never an internal error.
    message = assert_dialect_error(path, response, (400, 403, 404, 422, 424))
    assert "Internal error" not in message, message


# -- numbers no engine can hold ----------------------------------------------------------------

BIG = 2**70  # beyond int64
HUGE_NUMBERS = [
    pytest.param("/v1/chat/completions", b'"max_tokens": 1e30', id="chat-max_tokens=1e30"),
    pytest.param("/v1/chat/completions", b'"max_tokens": ' + str(10**30).encode(), id="chat-max_tokens=10**30"),
    pytest.param("/v1/chat/completions", b'"max_completion_tokens": 1e30', id="chat-max_completion_tokens=1e30"),
    pytest.param("/v1/chat/completions", b'"seed": ' + str(2**80).encode(), id="chat-seed=2**80"),
    pytest.param("/v1/chat/completions", b'"seed": -' + str(2**80).encode(), id="chat-seed=-2**80"),
    pytest.param("/v1/chat/completions", b'"n": ' + str(BIG).encode(), id="chat-n=2**70"),
    pytest.param("/v1/chat/completions", b'"temperature": NaN', id="chat-temperature=NaN-literal"),
    pytest.param("/v1/chat/completions", b'"temperature": Infinity', id="chat-temperature=Infinity-literal"),
    pytest.param("/v1/chat/completions", b'"temperature": -Infinity', id="chat-temperature=-Infinity-literal"),
    pytest.param("/v1/chat/completions", b'"temperature": 1e400', id="chat-temperature=1e400"),
    pytest.param("/v1/chat/completions", b'"temperature": "NaN"', id="chat-temperature=NaN-string"),
    pytest.param("/v1/chat/completions", b'"top_p": "NaN"', id="chat-top_p=NaN-string"),
    pytest.param("/v1/chat/completions", b'"logit_bias": {"1": "Infinity"}', id="chat-logit_bias=Infinity"),
    pytest.param("/v1/chat/completions", b'"top_logprobs": ' + str(BIG).encode() + b', "logprobs": true',
                 id="chat-top_logprobs=2**70"),
    pytest.param("/v1/completions", b'"max_tokens": 1e30', id="completion-max_tokens=1e30"),
    pytest.param("/v1/completions", b'"logprobs": ' + str(BIG).encode(), id="completion-logprobs=2**70"),
    pytest.param("/v1/completions", b'"best_of": ' + str(BIG).encode(), id="completion-best_of=2**70"),
    pytest.param("/v1/completions", b'"frequency_penalty": "-Infinity"', id="completion-frequency_penalty=-inf"),
    pytest.param("/generate", b'"max_new_tokens": 1e30', id="generate-max_new_tokens=1e30"),
    pytest.param("/generate", b'"max_new_tokens": ' + str(10**30).encode(), id="generate-max_new_tokens=10**30"),
    pytest.param("/generate", b'"seed": ' + str(2**80).encode(), id="generate-seed=2**80"),
    pytest.param("/generate", b'"best_of": ' + str(BIG).encode(), id="generate-best_of=2**70"),
    pytest.param("/generate", b'"truncate": ' + str(BIG).encode(), id="generate-truncate=2**70"),
    pytest.param("/generate", b'"return_k_alternatives": ' + str(BIG).encode(), id="generate-return_k=2**70"),
    pytest.param("/generate", b'"temperature": NaN', id="generate-temperature=NaN-literal"),
    pytest.param("/generate", b'"temperature": Infinity', id="generate-temperature=Infinity-literal"),
    pytest.param("/generate", b'"temperature": 1e400', id="generate-temperature=1e400"),
    pytest.param("/generate", b'"temperature": "-Infinity"', id="generate-temperature=-inf-string"),
    pytest.param("/generate", b'"top_p": "NaN"', id="generate-top_p=NaN-string"),
    pytest.param("/generate", b'"frequency_penalty": "NaN"', id="generate-frequency_penalty=NaN-string"),
]

# Currently accepted (200): non-finite floats spelled as strings, which pydantic's lax mode turns
# into nan/inf, and integers beyond int64, which nothing bounds before the engine.
HUGE_NUMBERS_BUGS = [
    pytest.param("/generate", b'"temperature": "NaN"', id="generate-temperature=NaN-string"),
    pytest.param("/generate", b'"temperature": "Infinity"', id="generate-temperature=Infinity-string"),
    pytest.param("/generate", b'"repetition_penalty": "NaN"', id="generate-repetition_penalty=NaN-string"),
    pytest.param("/generate", b'"repetition_penalty": "Infinity"', id="generate-repetition_penalty=inf-string"),
    pytest.param("/generate_stream", b'"temperature": "NaN"', id="stream-temperature=NaN-string"),
    pytest.param("/v1/chat/completions", b'"repetition_penalty": "Infinity"', id="chat-repetition_penalty=inf-string"),
    pytest.param("/v1/completions", b'"repetition_penalty": "Infinity"',
                 id="completion-repetition_penalty=inf-string"),
    pytest.param("/generate", b'"top_k": ' + str(BIG).encode(), id="generate-top_k=2**70"),
    pytest.param("/v1/chat/completions", b'"top_k": ' + str(BIG).encode(), id="chat-top_k=2**70"),
    pytest.param("/v1/chat/completions", b'"min_tokens": ' + str(BIG).encode(), id="chat-min_tokens=2**70"),
    pytest.param("/v1/chat/completions", b'"stop_token_ids": [' + str(BIG).encode() + b"]",
                 id="chat-stop_token_ids=2**70"),
    pytest.param("/v1/chat/completions", b'"logit_bias": {"' + str(BIG).encode() + b'": 1}',
                 id="chat-logit_bias-key=2**70"),
]


def number_body(path: str, field: bytes) -> bytes:
    if is_openai(path):
        return with_field(path, field.split(b":", 1)[0].strip().strip(b'"'), field.split(b":", 1)[1].strip())
    return b'{"inputs": "hi", "parameters": {"max_new_tokens": 3, ' + field + b"}}"


async def _assert_number_refused(client: AsyncTestClient, path: str, field: bytes) -> None:
    response = await post_raw(client, path, number_body(path, field))
    if path == "/generate_stream" and response.status_code == 200:  # LoRAX streams report validation as an event
        events = [json.loads(e.removeprefix(b"data:")) for e in sse_events(response.content)]
        assert len(events) == 1 and events[0]["error_type"] == "validation", events
        return
    assert_dialect_error(path, response, 400 if is_openai(path) else (400, 422))


@pytest.mark.parametrize(("path", "field"), HUGE_NUMBERS)
async def test_numbers_out_of_range_are_4xx(client: AsyncTestClient, path: str, field: bytes) -> None:
    await _assert_number_refused(client, path, field)


@pytest.mark.parametrize(("path", "field"), HUGE_NUMBERS_BUGS)
async def test_non_finite_and_unrepresentable_numbers_are_4xx(client: AsyncTestClient, path: str, field: bytes) -> None:
    await _assert_number_refused(client, path, field)


# -- routing ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/nope", "/v1/chat/completion", "/nope", "/generate/x", "/v1/" + "a" * 2000],
                         ids=["v1-nope", "v1-typo", "nope", "generate-x", "v1-long"])
async def test_unknown_paths_are_404_in_the_dialect_shape(client: AsyncTestClient, path: str) -> None:
    assert_dialect_error(path, await client.post(path, content=b"{}", headers=JSON), 404)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/generate", "/generate_stream",
                                  "/tokenize"])
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
async def test_wrong_methods_are_405_in_the_dialect_shape(client: AsyncTestClient, path: str, method: str) -> None:
    response = await client.request(method, path, content=raw_json(VALID[path]), headers=JSON)
    assert_dialect_error(path, response, 405)


# -- and afterwards ----------------------------------------------------------------------------


async def test_the_server_is_healthy_after_all_of_it(client: AsyncTestClient) -> None:
    """Runs last in this module, on the app every test above has hit."""
    assert (await client.get("/health")).status_code == 200
    assert (await client.get("/ready")).status_code == 200
    for path in GENERATING:
        assert_served(path, await post_raw(client, path, raw_json(VALID[path])))
    adapter = {**VALID["/v1/chat/completions"], "model": ADAPTER}
    assert_served("/v1/chat/completions", await post_raw(client, "/v1/chat/completions", raw_json(adapter)))


async def test_hostile_requests_over_http_leave_the_server_healthy() -> None:
    """The same hostile bodies through uvicorn (httptools), some concurrently: every answer arrives,
    the server keeps serving, nothing hangs."""
    engine = SyntheticEngine(name=BASE, max_model_len=MAX_MODEL_LEN)
    hostile = [
        ("/v1/chat/completions", b'{"model": "synth", '),
        ("/generate", b"\xff\xfe"),
        ("/v1/chat/completions", nested_lists(10_000)),
        ("/generate", nested_objects(10_000)),
        ("/v1/completions", b'{"model": "synth", "max_tokens": 3, "prompt": "\xff"}'),
        ("/generate_stream", b'{"inputs": "\\ud800"}'),
        ("/tokenize", raw_json({"inputs": "\x00" * 1000})),
        ("/v1/chat/completions", raw_json({"model": "a\x00b", "messages": USER})),
        ("/generate", b'{"inputs": "hi", "parameters": {"temperature": NaN}}'),
        ("/", b""),
        ("/invocations", b"null"),
    ]
    async with serve(engine) as live:
        async with httpx.AsyncClient(base_url=live.base_url, timeout=20) as http:
            responses = await asyncio.gather(
                *[http.post(path, content=content, headers=JSON) for path, content in hostile * 3]
            )
            for (path, _), response in zip(hostile * 3, responses):  # every one answered, in JSON
                assert response.headers["content-type"].startswith("application/json"), (path, response.text[:200])
                assert isinstance(response.json(), (dict, list)), (path, response.text[:200])
            assert (await http.get("/health")).status_code == 200
            for path in GENERATING:
                response = await http.post(path, content=raw_json(VALID[path]), headers=JSON)
                assert_served(path, response)
