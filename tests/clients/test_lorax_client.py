"""The unchanged ``lorax-client`` package (0.6.3 from PyPI) against the real server: a script written
for LoRAX must run unchanged, streaming and not, through the base model and through adapters."""

from __future__ import annotations

import json

import httpx
import pytest

lorax = pytest.importorskip("lorax")
from lorax.errors import GenerationError, ValidationError  # noqa: E402

pytestmark = pytest.mark.engine

PROMPT = "The weather in the city is"


@pytest.fixture(scope="module")
def client(live_server) -> "lorax.Client":
    return lorax.Client(live_server.base_url, timeout=120)


@pytest.fixture(scope="module")
def aclient(live_server) -> "lorax.AsyncClient":
    return lorax.AsyncClient(live_server.base_url, timeout=2)


@pytest.mark.parametrize("adapter_id", [None, "demo-lora-a", "demo-lora-b"])
def test_generate_with_details(client, adapter_id):
    r = client.generate(PROMPT, adapter_id=adapter_id, max_new_tokens=10)
    assert r.generated_text
    d = r.details
    assert d.finish_reason == "length"
    assert d.generated_tokens == 10 == len(d.tokens)
    assert d.prompt_tokens > 0
    assert d.seed is None  # greedy by default: no seed used
    assert all(t.logprob <= 0 and t.special is False for t in d.tokens)
    assert d.prefill == []


def test_adapters_change_output_and_greedy_is_deterministic(client):
    base = client.generate(PROMPT, max_new_tokens=12).generated_text
    a = client.generate(PROMPT, adapter_id="demo-lora-a", max_new_tokens=12).generated_text
    b = client.generate(PROMPT, adapter_id="demo-lora-b", max_new_tokens=12).generated_text
    assert len({base, a, b}) == 3
    assert client.generate(PROMPT, adapter_id="demo-lora-a", max_new_tokens=12).generated_text == a
    assert client.generate(PROMPT, adapter_id="", max_new_tokens=12).generated_text == base


@pytest.mark.parametrize("adapter_id", [None, "demo-lora-b"])
def test_generate_stream_matches_generate(client, adapter_id):
    expected = client.generate(PROMPT, adapter_id=adapter_id, max_new_tokens=8).generated_text
    events = list(client.generate_stream(PROMPT, adapter_id=adapter_id, max_new_tokens=8, details=True))
    assert len(events) == 8
    assert all(e.generated_text is None and e.details is None for e in events[:-1])
    assert events[-1].generated_text == expected
    assert events[-1].details.finish_reason == "length"
    assert events[-1].details.generated_tokens == 8


def test_streams_through_an_adapter_differ_from_base(client):
    base = [e.token.id for e in client.generate_stream(PROMPT, max_new_tokens=8)]
    lora = [e.token.id for e in client.generate_stream(PROMPT, adapter_id="demo-lora-a", max_new_tokens=8)]
    assert base != lora


def test_decoder_input_details_and_alternatives(client, live_server):
    r = client.generate(PROMPT, max_new_tokens=4, decoder_input_details=True, return_k_alternatives=2)
    d = r.details
    assert len(d.prefill) == d.prompt_tokens
    assert d.prefill[0].logprob is None and all(t.logprob is not None for t in d.prefill[1:])
    for t in d.tokens:
        assert len(t.alternative_tokens) == 2
        assert t.alternative_tokens[0].id == t.id  # greedy: the chosen token is the top alternative
    # lorax-client's generate_stream has no return_k_alternatives argument: raw HTTP for streams
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 3, "return_k_alternatives": 2}}
    raw = httpx.post(live_server.base_url + "/generate_stream", json=body, timeout=60).content
    events = [json.loads(e[5:]) for e in raw.split(b"\n\n") if e]
    assert len(events) == 3 and all(len(e["token"]["alternative_tokens"]) == 2 for e in events)


def test_best_of_returns_the_other_sequences(client):
    r = client.generate(PROMPT, adapter_id="demo-lora-a", max_new_tokens=6, best_of=2, do_sample=True)
    assert len(r.details.best_of_sequences) == 1
    other = r.details.best_of_sequences[0]
    assert other.generated_tokens == 6
    mean = lambda toks: sum(t.logprob for t in toks) / len(toks)  # noqa: E731
    assert mean(r.details.tokens) >= mean(other.tokens)


def test_stop_sequence_keeps_the_stop_text(client):
    full = client.generate(PROMPT, max_new_tokens=20).generated_text
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    r = client.generate(PROMPT, max_new_tokens=20, stop_sequences=[stop])
    assert r.details.finish_reason == "stop_sequence"
    assert r.generated_text.endswith(stop)
    assert full.startswith(r.generated_text)
    events = list(client.generate_stream(PROMPT, max_new_tokens=20, stop_sequences=[stop], details=True))
    assert events[-1].generated_text == r.generated_text
    assert events[-1].details.finish_reason == "stop_sequence"


def test_seeded_sampling_is_reproducible_and_reported(client):
    a = client.generate(PROMPT, max_new_tokens=10, do_sample=True, seed=42, temperature=0.9)
    b = client.generate(PROMPT, max_new_tokens=10, do_sample=True, seed=42, temperature=0.9)
    assert a.generated_text == b.generated_text
    assert a.details.seed == 42


def test_return_full_text(client):
    r = client.generate(PROMPT, max_new_tokens=4, return_full_text=True)
    assert r.generated_text.startswith(PROMPT)


def test_response_format_json_schema(client):
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 10}, "sunny": {"type": "boolean"}},
        "required": ["city", "sunny"],
        "additionalProperties": False,
    }
    r = client.generate(
        PROMPT, adapter_id="demo-lora-b", max_new_tokens=60,
        response_format={"type": "json_object", "schema": schema},
    )
    data = json.loads(r.generated_text)
    assert set(data) == {"city", "sunny"} and isinstance(data["sunny"], bool)


def test_response_format_without_schema_is_any_json_object(live_server):
    # lorax-client 0.6.3 cannot send a format without a schema: raw HTTP, both "absent" and null.
    for fmt in ({"type": "json_object"}, {"type": "json_object", "schema": None}):
        body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 60, "response_format": fmt, "details": True}}
        r = httpx.post(live_server.base_url + "/generate", json=body, timeout=60).json()
        assert r["details"]["finish_reason"] == "eos_token", r
        assert isinstance(json.loads(r["generated_text"]), dict)


def test_client_side_validation_errors(client):
    with pytest.raises(ValidationError):
        client.generate(PROMPT, temperature=-1.0)
    with pytest.raises(ValidationError):
        client.generate(PROMPT, top_k=0)


def test_server_side_validation_errors_raise_the_clients_error(client):
    with pytest.raises(ValidationError, match="max_new_tokens"):
        client.generate(PROMPT, max_new_tokens=5000)
    with pytest.raises(ValidationError, match="stop sequences"):
        client.generate(PROMPT, stop_sequences=["a", "b", "c", "d", "e"])
    with pytest.raises(ValidationError, match="typical_p"):
        client.generate(PROMPT, typical_p=0.5)
    with pytest.raises(ValidationError, match="stop sequences"):
        list(client.generate_stream(PROMPT, stop_sequences=["a", "b", "c", "d", "e"]))
    with pytest.raises(ValidationError, match="inputs"):
        client.generate("word " * 2000)


def test_unknown_adapter_is_a_generation_error(client):
    with pytest.raises(GenerationError):
        client.generate(PROMPT, adapter_id="no-such-adapter")
    with pytest.raises(GenerationError):
        list(client.generate_stream(PROMPT, adapter_id="no-such-adapter"))


async def test_async_client(aclient):
    r = await aclient.generate(PROMPT, adapter_id="demo-lora-a", max_new_tokens=6)
    assert r.details.generated_tokens == 6
    events = [e async for e in aclient.generate_stream(PROMPT, adapter_id="demo-lora-a", max_new_tokens=6)]
    assert "".join(e.token.text for e in events) and events[-1].generated_text == r.generated_text
    with pytest.raises(ValidationError):
        await aclient.generate(PROMPT, max_new_tokens=5000)


def test_response_headers_and_info(live_server):
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 5, "adapter_id": "demo-lora-a"}}
    r = httpx.post(live_server.base_url + "/generate", json=body, timeout=60)
    h = r.headers
    assert r.status_code == 200 and isinstance(r.json(), dict)
    assert h["x-generated-tokens"] == "5"
    assert int(h["x-prompt-tokens"]) > 0
    for name in ("x-compute-time", "x-total-time", "x-validation-time", "x-queue-time", "x-inference-time",
                 "x-time-per-token"):
        assert int(h[name]) >= 0
    assert int(h["x-total-time"]) >= int(h["x-inference-time"])
    assert h["x-model-id"] == "loragate-demo"
    assert h["x-adapter-id"] == "demo-lora-a" and h["x-adapter-source"]
    assert h["x-compute-characters"] == str(len(PROMPT))
    base = httpx.post(live_server.base_url + "/generate", json={"inputs": PROMPT}, timeout=60)
    assert "x-adapter-id" not in base.headers
    info = httpx.get(live_server.base_url + "/info").json()
    assert info["model_id"] == "loragate-demo"
    assert info["max_total_tokens"] == 1024 and info["max_input_length"] == 1023
    assert info["model_dtype"] == "torch.float32"
    tokens = httpx.post(live_server.base_url + "/tokenize", json={"inputs": "Hello world"}).json()
    assert tokens[0]["start"] == 0 and tokens[-1]["stop"] == len("Hello world")


def test_native_stream_framing(live_server):
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 3, "details": True}}
    with httpx.stream("POST", live_server.base_url + "/generate_stream", json=body, timeout=60) as r:
        raw = r.read()
    events = raw.split(b"\n\n")
    assert events[-1] == b"" and len(events) == 4
    for e in events[:-1]:
        assert e.startswith(b'data:{"token":{"id":')  # axum framing: no space after "data:"
    assert b"[DONE]" not in raw
    last = json.loads(events[-2][5:])
    assert list(last) == ["token", "generated_text", "details"]
    assert list(last["details"]) == ["finish_reason", "prompt_tokens", "generated_tokens", "seed"]
