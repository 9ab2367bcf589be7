"""LoRAX validation beyond the rule table: when LoRAX samples, type errors and malformed JSON (before any
LoRAX rule), and on streams every validation error as one SSE event on a 200."""

from __future__ import annotations

from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from native_api.schema import GenerateParameters
from native_api.validation import uses_sampling
from tests.unit.conftest import ADAPTER, MAX_MODEL_LEN
from tests.unit.test_native_validation import (  # noqa: F401 (`client` is a pytest fixture)
    client,
    check,
    COMMON_RULES,
    input_message,
    MAX_INPUT,
    MERGED,
    ORDER,
    shared_loop,
    single_error_event,
    stream_request,
    total_message,
    validation_body,
)


# -- uses_sampling ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, False),
        ({"do_sample": True}, True),
        ({"temperature": 1.0}, False),
        ({"temperature": 0.7}, True),
        ({"temperature": 1.5}, True),
        ({"temperature": 0}, False),
        ({"temperature": 0, "do_sample": True}, False),
        ({"top_k": 5}, True),
        ({"top_p": 1.0}, False),
        ({"top_p": 0.9}, True),
        ({"typical_p": 0.9}, True),
        ({"typical_p": 1.0}, False),
    ],
    ids=repr,
)
def test_uses_sampling(params: dict[str, Any], expected: bool) -> None:
    assert uses_sampling(GenerateParameters(**params)) is expected


# -- type errors and malformed JSON (before any LoRAX rule) ------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"inputs": "Hello", "parameters": {"max_new_tokens": -1}}, id="max_new_tokens=-1"),
        pytest.param({"inputs": "Hello", "parameters": {"seed": -5}}, id="seed=-5"),
        pytest.param({"inputs": "Hello", "parameters": {"stop": "x"}}, id="stop-string"),
        pytest.param({"inputs": "Hello", "parameters": {"best_of": -1}}, id="best_of=-1"),
        pytest.param({"inputs": "Hello", "parameters": {"truncate": -2}}, id="truncate=-2"),
        pytest.param({"inputs": "Hello", "parameters": {"temperature": "hot"}}, id="temperature-string"),
        pytest.param({"inputs": "Hello", "parameters": {"merged_adapters": {"weights": [1.0]}}}, id="merged-without-ids"),
        pytest.param({"inputs": 5}, id="inputs-number"),
        pytest.param({"parameters": {"max_new_tokens": 2}}, id="inputs-missing"),
    ],
)
@pytest.mark.parametrize("path", ["/generate", "/", "/generate_stream"])
@shared_loop
async def test_type_error_is_422_json(client: AsyncTestClient, body: dict[str, Any], path: str) -> None:
    response = await client.post(path, json=body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/json")
    payload = response.json()
    assert list(payload) == ["error", "error_type"]
    assert payload["error_type"] == "validation"
    assert payload["error"].startswith("Failed to deserialize the JSON body into the target type")


MALFORMED = [
    pytest.param(b"not json", id="not-json"),
    pytest.param(b'{"inputs": "x",}', id="trailing-comma"),
    pytest.param(b'{"inputs": ', id="truncated"),
]


@pytest.mark.parametrize("content", MALFORMED)
@pytest.mark.parametrize("path", ["/generate", "/", "/generate_stream"])
@shared_loop
async def test_malformed_json_is_400_bad_request(client: AsyncTestClient, content: bytes, path: str) -> None:
    response = await client.post(path, content=content, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/json")
    payload = response.json()
    assert list(payload) == ["error", "error_type"]
    assert payload["error_type"] == "bad_request"


@pytest.mark.parametrize(
    "content",
    [
        *MALFORMED[:2],
        pytest.param(b'{"inputs": ', id="truncated"),
    ],
)
@shared_loop
async def test_malformed_json_message_is_lorax_wording(client: AsyncTestClient, content: bytes) -> None:
    response = await client.post("/generate", content=content, headers={"content-type": "application/json"})
    assert response.json()["error"].startswith("Failed to parse the request body as JSON: ")


# -- streams: every validation error is one SSE event on a 200 --------------------------------------

STREAM_ONLY = [
    pytest.param(
        {"best_of": 2, "do_sample": True}, "Hello", "`best_of` != 1 is not supported when streaming tokens", id="best_of=2"
    ),
    pytest.param({"best_of": 0}, "Hello", "`best_of` != 1 is not supported when streaming tokens", id="best_of=0"),
    pytest.param(
        {"decoder_input_details": True},
        "Hello",
        "`decoder_input_details` == true is not supported when streaming tokens",
        id="decoder_input_details",
    ),
    pytest.param(
        {"best_of": 2, "temperature": -1},
        "Hello",
        "`best_of` != 1 is not supported when streaming tokens",
        id="best_of-before-everything",
    ),
    pytest.param(
        {"decoder_input_details": True, "adapter_id": ADAPTER, "merged_adapters": MERGED},
        "Hello",
        "`decoder_input_details` == true is not supported when streaming tokens",
        id="decoder_input_details-before-adapters",
    ),
    pytest.param(
        {"max_new_tokens": 2}, "x" * (MAX_INPUT - 1), total_message(MAX_INPUT, 2), id="length-total"
    ),
    pytest.param({}, "x" * MAX_INPUT, input_message(MAX_MODEL_LEN), id="length-input"),
]


# Every non-stream rule holds on streams too, in the same order (best_of aside: refused outright).
STREAM_RULES = STREAM_ONLY + COMMON_RULES + [p for p in ORDER if "best_of" not in p.values[0]]


@pytest.mark.parametrize(("params", "inputs", "message"), STREAM_RULES)
@pytest.mark.parametrize("path", ["/generate_stream", "/"])
@shared_loop
async def test_stream_validation_error_is_one_sse_event(
    client: AsyncTestClient, path: str, params: dict[str, Any], inputs: str, message: str
) -> None:
    response = await client.post(path, json=stream_request(path, inputs, params))
    assert single_error_event(response) == validation_body(message)


def test_stream_rules_direct() -> None:
    assert check({"best_of": 2, "do_sample": True}, stream=True) == "`best_of` != 1 is not supported when streaming tokens"
    assert check({"best_of": 1}, stream=True) is None
    assert check({"decoder_input_details": True}, stream=True) == (
        "`decoder_input_details` == true is not supported when streaming tokens"
    )
    assert check({"decoder_input_details": True}, stream=False) is None


@pytest.mark.parametrize("params", [{"typical_p": 0.5}, {"watermark": True}], ids=["typical_p", "watermark"])
@pytest.mark.parametrize("path", ["/generate_stream", "/"])
@shared_loop
async def test_stream_unsupported_feature_is_one_sse_event(client: AsyncTestClient, path: str, params: dict[str, Any]) -> None:
    payload = single_error_event(await client.post(path, json=stream_request(path, "Hello", params)))
    assert payload["error_type"] == "validation"
    assert payload["error"].startswith("Input validation error: ") and "not supported" in payload["error"]
