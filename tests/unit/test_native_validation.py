"""LoRAX request validation: every rule with LoRAX's exact message, LoRAX's order of checks, the
length checks, type and JSON errors, and validation errors on streams (HTTP 200, one SSE event).

Messages and order: shared/reference/lorax-api.md §2.2-2.6 (LoRAX ``router/src/validation.rs``).
Limits on the synthetic engine: max_total_tokens = max_model_len (512), max_input_length = 511;
"Hello" is 6 prompt tokens (``<s>`` + one token per byte)."""

from __future__ import annotations

import json
from typing import Any, AsyncIterator

import pytest
import pytest_asyncio
from litestar.testing import AsyncTestClient

from app.engine.synthetic import SyntheticEngine
from native_api.schema import GenerateParameters
from native_api.validation import (
    LoraxLimits,
    LoraxValidationError,
    validate_length,
    validate_parameters,
)
from tests.unit.conftest import ADAPTER, BASE, MAX_MODEL_LEN, make_app, sse_events

MAX_INPUT = MAX_MODEL_LEN - 1
LIMITS = LoraxLimits(max_input_length=MAX_INPUT, max_total_tokens=MAX_MODEL_LEN)
MERGED = {"ids": [ADAPTER], "weights": [1.0]}
FIVE_STOPS = ["a", "b", "c", "d", "e"]

# No test here changes the engine: one app (and event loop) for the module keeps these ~300
# requests fast. Every async test is marked with `shared_loop`.
shared_loop = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client() -> AsyncIterator[AsyncTestClient]:
    async with AsyncTestClient(make_app(SyntheticEngine(name=BASE, max_model_len=MAX_MODEL_LEN))) as c:
        yield c


def check(params: dict[str, Any], inputs: str = "Hello", *, stream: bool = False, limits: LoraxLimits = LIMITS) -> str | None:
    """The message ``validate_parameters`` raises for ``params`` (``None`` when they pass)."""
    try:
        validate_parameters(GenerateParameters(**params), inputs, limits, stream=stream)
    except LoraxValidationError as exc:
        return exc.message
    return None


def validation_body(message: str) -> dict[str, str]:
    return {"error": f"Input validation error: {message}", "error_type": "validation"}


def assert_validation_422(response: Any, message: str) -> None:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == validation_body(message)


def single_error_event(response: Any) -> dict[str, Any]:
    """The payload of a stream that failed before its first token: HTTP 200 and exactly one
    ``data:{"error": ..., "error_type": ...}`` event, nothing else."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.content)
    assert len(events) == 1, events
    assert events[0].startswith(b'data:{"error":'), events[0]
    payload = json.loads(events[0][len(b"data:") :])
    assert list(payload) == ["error", "error_type"]
    assert response.content == b"data:" + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"
    return payload


def stream_request(path: str, inputs: str, params: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {"inputs": inputs, "parameters": params}
    if path == "/":
        body["stream"] = True
    return body


# -- every rule, with LoRAX's exact message ---------------------------------------------------

# (parameters, inputs, message). Rules that hold on streams too (no best_of here: see STREAM_ONLY).
COMMON_RULES = [
    pytest.param({"temperature": -0.1}, "Hello", "`temperature` must be non-negative", id="temperature<0"),
    pytest.param({"repetition_penalty": 0}, "Hello", "`repetition_penalty` must be strictly positive", id="rep=0"),
    pytest.param({"repetition_penalty": -1.0}, "Hello", "`repetition_penalty` must be strictly positive", id="rep<0"),
    pytest.param({"frequency_penalty": 2.01}, "Hello", "`frequency_penalty` must be >= -2.0 and <= 2.0", id="freq>2"),
    pytest.param({"frequency_penalty": -2.5}, "Hello", "`frequency_penalty` must be >= -2.0 and <= 2.0", id="freq<-2"),
    pytest.param({"presence_penalty": 3}, "Hello", "`presence_penalty` must be >= -2.0 and <= 2.0", id="pres>2"),
    pytest.param({"presence_penalty": -2.01}, "Hello", "`presence_penalty` must be >= -2.0 and <= 2.0", id="pres<-2"),
    pytest.param({"top_p": 0}, "Hello", "`top_p` must be > 0.0 and < 1.0", id="top_p=0"),
    pytest.param({"top_p": -0.5}, "Hello", "`top_p` must be > 0.0 and < 1.0", id="top_p<0"),
    pytest.param({"top_p": 1.01}, "Hello", "`top_p` must be > 0.0 and < 1.0", id="top_p>1"),
    pytest.param({"typical_p": 0}, "Hello", "`typical_p` must be > 0.0 and < 1.0", id="typical_p=0"),
    pytest.param({"typical_p": 1.0}, "Hello", "`typical_p` must be > 0.0 and < 1.0", id="typical_p=1"),
    pytest.param({"typical_p": 1.5}, "Hello", "`typical_p` must be > 0.0 and < 1.0", id="typical_p>1"),
    pytest.param({"top_k": 0}, "Hello", "`top_k` must be strictly positive", id="top_k=0"),
    pytest.param({"top_k": -3}, "Hello", "`top_k` must be strictly positive", id="top_k<0"),
    pytest.param({"return_k_alternatives": 0}, "Hello", "`return_k_alternatives` must be strictly positive", id="k_alt=0"),
    pytest.param({"return_k_alternatives": -2}, "Hello", "`return_k_alternatives` must be strictly positive", id="k_alt<0"),
    pytest.param({"max_new_tokens": 0}, "Hello", "`max_new_tokens` must be strictly positive", id="max_new_tokens=0"),
    pytest.param({"stop": FIVE_STOPS}, "Hello", "`stop` supports up to 4 stop sequences. Given: 5", id="5-stops"),
    pytest.param({}, "", "`inputs` cannot be empty", id="empty-inputs"),
    pytest.param(
        {"truncate": 0}, "Hello", f"`truncate` must be strictly positive and less than {MAX_INPUT}. Given: 0", id="truncate=0"
    ),
    pytest.param(
        {"truncate": MAX_INPUT + 1},
        "Hello",
        f"`truncate` must be strictly positive and less than {MAX_INPUT}. Given: {MAX_INPUT + 1}",
        id="truncate>max_input_length",
    ),
    pytest.param(
        {"adapter_id": ADAPTER, "merged_adapters": MERGED},
        "Hello",
        "at most one of `adapter_id` or `adapters` may be provided",
        id="adapter_id+merged_adapters",
    ),
    pytest.param(
        {"merged_adapters": {"ids": [], "weights": []}},
        "Hello",
        "at least one adapter ID must be provided when setting `adapters`",
        id="merged-empty-ids",
    ),
    pytest.param(
        {"merged_adapters": {"ids": [ADAPTER, "other"], "weights": [1.0]}},
        "Hello",
        "number of adapter IDs must match number of adapter weights",
        id="merged-length-mismatch",
    ),
]

BEST_OF_RULES = [
    pytest.param(
        {"best_of": 3, "do_sample": True}, "Hello", "`best_of` must be > 0 and <= 2. Given: 3", id="best_of>max"
    ),
    pytest.param({"best_of": 2}, "Hello", "you must use sampling when `best_of` is > 1", id="best_of-greedy"),
    pytest.param(
        {"best_of": 2, "do_sample": True, "seed": 1}, "Hello", "`seed` must not be set when `best_of` > 1", id="best_of+seed"
    ),
]

ALL_RULES = COMMON_RULES + BEST_OF_RULES


@pytest.mark.parametrize(("params", "inputs", "message"), ALL_RULES)
def test_rule_message(params: dict[str, Any], inputs: str, message: str) -> None:
    assert check(params, inputs) == message


@pytest.mark.parametrize(("params", "inputs", "message"), ALL_RULES)
@shared_loop
async def test_rule_over_http_is_422_with_lorax_body(
    client: AsyncTestClient, params: dict[str, Any], inputs: str, message: str
) -> None:
    response = await client.post("/generate", json={"inputs": inputs, "parameters": params})
    assert_validation_422(response, message)


@pytest.mark.parametrize(("params", "inputs", "message"), ALL_RULES)
@shared_loop
async def test_rule_on_compat_route_is_422(client: AsyncTestClient, params: dict[str, Any], inputs: str, message: str) -> None:
    response = await client.post("/", json={"inputs": inputs, "parameters": params})
    assert_validation_422(response, message)


def test_best_of_disabled_when_max_best_of_is_1() -> None:
    limits = LoraxLimits(max_best_of=1, max_input_length=MAX_INPUT, max_total_tokens=MAX_MODEL_LEN)
    assert check({"best_of": 2, "do_sample": True}, limits=limits) == "`best_of` != 1 is not allowed for this endpoint"


@pytest.mark.parametrize(
    "params",
    [
        pytest.param({}, id="defaults"),
        pytest.param({"top_p": 1.0}, id="top_p=1.0"),
        pytest.param({"top_p": 0.01}, id="top_p=0.01"),
        pytest.param({"temperature": 0}, id="temperature=0"),
        pytest.param({"frequency_penalty": 2.0, "presence_penalty": -2.0}, id="penalties-at-bounds"),
        pytest.param({"frequency_penalty": -2.0, "presence_penalty": 2.0}, id="penalties-at-other-bounds"),
        pytest.param({"repetition_penalty": 0.01}, id="rep-small"),
        pytest.param({"top_k": 1, "return_k_alternatives": 1}, id="top_k=1"),
        pytest.param({"stop": ["a", "b", "c", "d"]}, id="4-stops"),
        pytest.param({"truncate": MAX_INPUT}, id="truncate=max_input_length"),
        pytest.param({"best_of": 2, "do_sample": True}, id="best_of=2-sampling"),
        pytest.param({"best_of": 2, "temperature": 0.5}, id="best_of=2-temperature"),
        pytest.param({"best_of": 1, "seed": 3}, id="best_of=1+seed"),
        pytest.param({"best_of": 0}, id="best_of=0"),
        pytest.param({"adapter_id": "", "max_new_tokens": 1}, id="empty-adapter_id"),
    ],
)
def test_valid_parameters_pass(params: dict[str, Any]) -> None:
    assert check(params) is None


@shared_loop
async def test_top_p_1_is_accepted_over_http(client: AsyncTestClient) -> None:
    response = await client.post("/generate", json={"inputs": "Hello", "parameters": {"top_p": 1.0, "max_new_tokens": 2}})
    assert response.status_code == 200, response.text


@shared_loop
async def test_temperature_0_is_accepted_and_greedy(client: AsyncTestClient) -> None:
    body = {"inputs": "Hello", "parameters": {"temperature": 0, "max_new_tokens": 4, "details": True}}
    response = await client.post("/generate", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["details"]["seed"] is None
    greedy = await client.post("/generate", json={"inputs": "Hello", "parameters": {"max_new_tokens": 4}})
    assert response.json()["generated_text"] == greedy.json()["generated_text"]


# -- what vLLM cannot do is refused, not ignored ---------------------------------------------


@pytest.mark.parametrize(
    ("params", "word"),
    [
        pytest.param({"typical_p": 0.5}, "typical_p", id="typical_p=0.5"),
        pytest.param({"typical_p": 0.999}, "typical_p", id="typical_p=0.999"),
        pytest.param({"watermark": True}, "watermark", id="watermark"),
    ],
)
@pytest.mark.parametrize("path", ["/generate", "/"])
@shared_loop
async def test_unsupported_feature_is_a_clear_validation_error(
    client: AsyncTestClient, params: dict[str, Any], word: str, path: str
) -> None:
    response = await client.post(path, json={"inputs": "Hello", "parameters": {**params, "max_new_tokens": 2}})
    assert response.status_code == 422, response.text
    body = response.json()
    assert list(body) == ["error", "error_type"] and body["error_type"] == "validation"
    assert body["error"].startswith("Input validation error: ")
    assert f"`{word}`" in body["error"] and "not supported" in body["error"]


# -- merged_adapters beyond LoRAX's own rules (no merge is built here: that needs torch) ----------


@pytest.mark.parametrize(
    ("merged", "message"),
    [
        pytest.param(
            {**MERGED, "merge_strategy": "bogus"},
            "`merge_strategy` must be one of linear, ties, dare_linear, dare_ties; got `bogus`",
            id="unknown-strategy",
        ),
        pytest.param(
            {**MERGED, "merge_strategy": "ties", "density": 0}, "`density` must be in (0, 1] for `ties`", id="ties-density-0"
        ),
    ],
)
@shared_loop
async def test_impossible_merge_is_a_validation_error(client: AsyncTestClient, merged: dict[str, Any], message: str) -> None:
    params = {"merged_adapters": merged, "max_new_tokens": 2}
    assert_validation_422(await client.post("/generate", json={"inputs": "Hello", "parameters": params}), message)
    payload = single_error_event(await client.post("/generate_stream", json={"inputs": "Hello", "parameters": params}))
    assert payload == validation_body(message)


@shared_loop
async def test_merge_of_an_unknown_adapter_is_a_generation_error(client: AsyncTestClient) -> None:
    params = {"merged_adapters": {"ids": ["no-such-adapter"], "weights": [1.0]}, "max_new_tokens": 2}
    response = await client.post("/generate", json={"inputs": "Hello", "parameters": params})
    assert response.status_code == 424, response.text
    payloads = [response.json()]
    for path in ("/generate_stream", "/"):
        payloads.append(single_error_event(await client.post(path, json=stream_request(path, "Hello", params))))
    for payload in payloads:
        assert payload["error_type"] == "generation"
        assert payload["error"].startswith("Request failed during generation: ") and "no-such-adapter" in payload["error"]


def test_watermark_false_and_typical_p_absent_pass() -> None:
    assert check({"watermark": False, "typical_p": None}) is None


# -- order of the checks ------------------------------------------------------------------------

ORDER = [
    pytest.param(
        {"adapter_id": ADAPTER, "merged_adapters": MERGED, "best_of": 3, "do_sample": True},
        "Hello",
        "at most one of `adapter_id` or `adapters` may be provided",
        id="adapter-before-best_of",
    ),
    pytest.param(
        {"best_of": 3, "do_sample": True, "temperature": -1},
        "Hello",
        "`best_of` must be > 0 and <= 2. Given: 3",
        id="best_of-before-temperature",
    ),
    pytest.param(
        {"best_of": 2, "repetition_penalty": 0},
        "Hello",
        "you must use sampling when `best_of` is > 1",
        id="best_of-sampling-before-repetition_penalty",
    ),
    pytest.param(
        {"temperature": -1, "top_p": 0}, "Hello", "`temperature` must be non-negative", id="temperature-before-top_p"
    ),
    pytest.param(
        {"temperature": -1, "repetition_penalty": 0},
        "Hello",
        "`temperature` must be non-negative",
        id="temperature-before-repetition_penalty",
    ),
    pytest.param(
        {"repetition_penalty": 0, "frequency_penalty": 5},
        "Hello",
        "`repetition_penalty` must be strictly positive",
        id="repetition-before-frequency",
    ),
    pytest.param(
        {"frequency_penalty": 5, "presence_penalty": 5},
        "Hello",
        "`frequency_penalty` must be >= -2.0 and <= 2.0",
        id="frequency-before-presence",
    ),
    pytest.param(
        {"presence_penalty": 5, "top_p": 2}, "Hello", "`presence_penalty` must be >= -2.0 and <= 2.0", id="presence-before-top_p"
    ),
    pytest.param({"top_p": 2, "typical_p": 2}, "Hello", "`top_p` must be > 0.0 and < 1.0", id="top_p-before-typical_p"),
    pytest.param({"typical_p": 2, "top_k": 0}, "Hello", "`typical_p` must be > 0.0 and < 1.0", id="typical_p-before-top_k"),
    pytest.param(
        {"top_k": 0, "return_k_alternatives": 0}, "Hello", "`top_k` must be strictly positive", id="top_k-before-k_alt"
    ),
    pytest.param(
        {"top_k": 0, "max_new_tokens": 0}, "Hello", "`top_k` must be strictly positive", id="top_k-before-max_new_tokens"
    ),
    pytest.param(
        {"return_k_alternatives": 0, "max_new_tokens": 0},
        "Hello",
        "`return_k_alternatives` must be strictly positive",
        id="k_alt-before-max_new_tokens",
    ),
    pytest.param(
        {"max_new_tokens": 0, "stop": FIVE_STOPS},
        "Hello",
        "`max_new_tokens` must be strictly positive",
        id="max_new_tokens-before-stop",
    ),
    pytest.param(
        {"stop": FIVE_STOPS, "best_of": 2, "do_sample": True, "seed": 1},
        "Hello",
        "`stop` supports up to 4 stop sequences. Given: 5",
        id="stop-before-seed",
    ),
    pytest.param(
        {"stop": FIVE_STOPS}, "", "`stop` supports up to 4 stop sequences. Given: 5", id="stop-before-empty-inputs"
    ),
    pytest.param(
        {"best_of": 2, "do_sample": True, "seed": 1},
        "",
        "`seed` must not be set when `best_of` > 1",
        id="seed-before-empty-inputs",
    ),
    pytest.param({"truncate": 0}, "", "`inputs` cannot be empty", id="empty-inputs-before-truncate"),
    pytest.param(
        {"truncate": 0, "typical_p": 0.5},
        "Hello",
        f"`truncate` must be strictly positive and less than {MAX_INPUT}. Given: 0",
        id="truncate-before-unsupported-typical_p",
    ),
    pytest.param(
        {"truncate": 0, "watermark": True},
        "Hello",
        f"`truncate` must be strictly positive and less than {MAX_INPUT}. Given: 0",
        id="truncate-before-unsupported-watermark",
    ),
    pytest.param(
        {"merged_adapters": MERGED, "temperature": -1},
        "Hello",
        "`temperature` must be non-negative",
        id="lorax-rules-before-unsupported-merged_adapters",
    ),
]


@pytest.mark.parametrize(("params", "inputs", "message"), ORDER)
def test_order_of_checks(params: dict[str, Any], inputs: str, message: str) -> None:
    assert check(params, inputs) == message


@pytest.mark.parametrize(("params", "inputs", "message"), ORDER)
@shared_loop
async def test_order_of_checks_over_http(client: AsyncTestClient, params: dict[str, Any], inputs: str, message: str) -> None:
    assert_validation_422(await client.post("/generate", json={"inputs": inputs, "parameters": params}), message)


@shared_loop
async def test_parameter_rules_come_before_length_checks(client: AsyncTestClient) -> None:
    body = {"inputs": "x" * 600, "parameters": {"temperature": -1, "max_new_tokens": 600}}
    assert_validation_422(await client.post("/generate", json=body), "`temperature` must be non-negative")


@pytest.mark.parametrize("path", ["/generate", "/generate_stream"])
@shared_loop
async def test_length_checks_come_before_the_adapter_lookup(client: AsyncTestClient, path: str) -> None:
    # LoRAX validates the whole request, lengths included, before any adapter is loaded.
    body = {"inputs": "x" * 600, "parameters": {"adapter_id": "no-such-adapter"}}
    response = await client.post(path, json=body)
    message = f"`inputs` must have less than {MAX_INPUT} tokens. Given: 601"
    if path == "/generate":
        assert_validation_422(response, message)
    else:
        assert single_error_event(response) == validation_body(message)


# -- length checks (after tokenization) -----------------------------------------------------------


def length_message(max_new_tokens: int | None, input_tokens: int) -> str | None:
    try:
        validate_length(GenerateParameters(max_new_tokens=max_new_tokens), input_tokens, LIMITS)
    except LoraxValidationError as exc:
        return exc.message
    return None


def total_message(input_tokens: int, max_new_tokens: int) -> str:
    return (
        f"`inputs` tokens + `max_new_tokens` must be <= {MAX_MODEL_LEN}. "
        f"Given: {input_tokens} `inputs` tokens and {max_new_tokens} `max_new_tokens`"
    )


def input_message(input_tokens: int) -> str:
    return f"`inputs` must have less than {MAX_INPUT} tokens. Given: {input_tokens}"


@pytest.mark.parametrize(
    ("max_new_tokens", "input_tokens", "expected"),
    [
        pytest.param(1, MAX_INPUT, None, id="fills-the-context"),
        pytest.param(None, MAX_INPUT, None, id="input-at-max_input_length"),
        pytest.param(2, MAX_INPUT, total_message(MAX_INPUT, 2), id="total>max"),
        pytest.param(MAX_MODEL_LEN, 1, total_message(1, MAX_MODEL_LEN), id="max_new_tokens=context"),
        pytest.param(None, MAX_MODEL_LEN, input_message(MAX_MODEL_LEN), id="input>max_input_length"),
        pytest.param(1, MAX_MODEL_LEN, total_message(MAX_MODEL_LEN, 1), id="total-checked-before-input"),
    ],
)
def test_validate_length(max_new_tokens: int | None, input_tokens: int, expected: str | None) -> None:
    assert length_message(max_new_tokens, input_tokens) == expected


@shared_loop
async def test_inputs_plus_max_new_tokens_over_the_context_is_422(client: AsyncTestClient) -> None:
    # "x" * 510 is 511 tokens with <s>.
    body = {"inputs": "x" * (MAX_INPUT - 1), "parameters": {"max_new_tokens": 2}}
    assert_validation_422(await client.post("/generate", json=body), total_message(MAX_INPUT, 2))


@shared_loop
async def test_inputs_over_max_input_length_is_422(client: AsyncTestClient) -> None:
    body = {"inputs": "x" * MAX_INPUT}  # 512 tokens
    assert_validation_422(await client.post("/generate", json=body), input_message(MAX_MODEL_LEN))


@shared_loop
async def test_input_at_max_input_length_generates_the_one_token_left(client: AsyncTestClient) -> None:
    for params in ({}, {"max_new_tokens": 1}):
        body = {"inputs": "x" * (MAX_INPUT - 1), "parameters": {**params, "details": True}}
        response = await client.post("/generate", json=body)
        assert response.status_code == 200, response.text
        details = response.json()["details"]
        assert (details["prompt_tokens"], details["generated_tokens"]) == (MAX_INPUT, 1)


@shared_loop
async def test_truncate_makes_a_long_input_fit(client: AsyncTestClient) -> None:
    # Deliberately TGI's semantics: truncation happens before the length checks (LoRAX's router
    # ignores `truncate` there and still refuses the over-long input).
    body = {"inputs": "x" * 600, "parameters": {"truncate": 10, "max_new_tokens": 2, "details": True}}
    response = await client.post("/generate", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["details"]["prompt_tokens"] == 10
