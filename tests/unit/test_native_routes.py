"""The LoRAX routes around generation: response headers, /info, /tokenize, health, routing, OpenAPI."""

from __future__ import annotations


import pytest
from litestar.testing import AsyncTestClient

from app.engine.synthetic import BOS_ID, SyntheticEngine
from tests.unit.conftest import ADAPTER, BASE, MAX_MODEL_LEN
from tests.unit.test_native_api import (  # noqa: F401 (`client` is a pytest fixture)
    client,
    fresh,
)


# -- response headers ------------------------------------------------------------------------------

INT_HEADERS = [
    "x-compute-time",
    "x-total-time",
    "x-validation-time",
    "x-queue-time",
    "x-inference-time",
    "x-time-per-token",
    "x-prompt-tokens",
    "x-generated-tokens",
    "x-total-tokens",
    "x-compute-characters",
]


@pytest.mark.parametrize("path", ["/generate", "/"])
async def test_response_headers(client: AsyncTestClient, path: str) -> None:
    inputs = "héllo wörld"  # 11 characters, 13 bytes
    response = await client.post(path, json={"inputs": inputs, "parameters": {"max_new_tokens": 7}})
    h = response.headers
    for name in INT_HEADERS:
        assert name in h, name
        assert h[name].isdigit(), (name, h[name])
    assert h["x-compute-characters"] == str(len(inputs)) == "11"
    assert h["x-prompt-tokens"] == "14"
    assert h["x-generated-tokens"] == "7"
    assert h["x-total-tokens"] == "21"
    assert h["x-model-id"] == BASE
    assert h["x-compute-type"]
    assert "x-adapter-id" not in h and "x-adapter-source" not in h


async def test_adapter_headers_only_with_an_adapter(client: AsyncTestClient) -> None:
    response = await client.post("/generate", json={"inputs": "Hello", "parameters": {"max_new_tokens": 2, "adapter_id": ADAPTER}})
    assert response.headers["x-adapter-id"] == ADAPTER
    assert response.headers["x-adapter-source"]
    assert response.headers["x-model-id"] == BASE


async def test_best_of_headers_count_the_returned_sequence(client: AsyncTestClient) -> None:
    response = await client.post(
        "/generate", json={"inputs": "Hello", "parameters": {"max_new_tokens": 5, "best_of": 2, "do_sample": True, "details": True}}
    )
    d = response.json()["details"]
    assert response.headers["x-generated-tokens"] == str(d["generated_tokens"]) == "5"
    assert response.headers["x-total-tokens"] == str(d["prompt_tokens"] + d["generated_tokens"])


# -- /info, /tokenize, health, routing, OpenAPI ----------------------------------------------------

INFO_KEYS = [
    "model_id",
    "model_sha",
    "model_dtype",
    "model_device_type",
    "model_pipeline_tag",
    "max_concurrent_requests",
    "max_best_of",
    "max_stop_sequences",
    "max_input_length",
    "max_total_tokens",
    "waiting_served_ratio",
    "max_batch_total_tokens",
    "max_waiting_tokens",
    "validation_workers",
    "eager_prefill",
    "version",
    "sha",
    "docker_label",
    "request_logger_url",
]


async def test_info(client: AsyncTestClient) -> None:
    response = await client.get("/info")
    assert response.status_code == 200
    info = response.json()
    assert list(info)[: len(INFO_KEYS)] == INFO_KEYS
    assert info["model_id"] == BASE
    assert info["max_total_tokens"] == MAX_MODEL_LEN
    assert info["max_input_length"] == MAX_MODEL_LEN - 1
    assert (info["max_best_of"], info["max_stop_sequences"]) == (2, 4)
    assert info["model_pipeline_tag"] != "lorax"  # else return_full_text would default to true
    for key in ("max_concurrent_requests", "max_batch_total_tokens", "max_waiting_tokens", "validation_workers"):
        assert isinstance(info[key], int), key
    assert isinstance(info["waiting_served_ratio"], float)
    assert isinstance(info["eager_prefill"], bool)
    assert isinstance(info["version"], str)


async def test_tokenize_returns_a_bare_array(client: AsyncTestClient) -> None:
    response = await client.post("/tokenize", json={"inputs": "Hi"})
    assert response.status_code == 200, response.text
    assert response.json() == [
        {"id": BOS_ID, "text": "<s>", "start": 0, "stop": 0},
        {"id": ord("H"), "text": "H", "start": 0, "stop": 1},
        {"id": ord("i"), "text": "i", "start": 1, "stop": 2},
    ]
    assert all(list(t) == ["id", "text", "start", "stop"] for t in response.json())


async def test_tokenize_without_special_tokens(client: AsyncTestClient) -> None:
    response = await client.post("/tokenize", json={"inputs": "Hi", "add_special_tokens": False})
    assert [t["id"] for t in response.json()] == [ord("H"), ord("i")]


@pytest.mark.parametrize("path", ["/", "/ping", "/health"])
async def test_health_aliases_are_200_with_an_empty_body(client: AsyncTestClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 200
    assert response.content == b""


@pytest.mark.parametrize("path", ["/", "/ping"])
async def test_health_aliases_are_503_once_the_engine_is_dead(path: str) -> None:
    engine = SyntheticEngine(name=BASE, max_model_len=MAX_MODEL_LEN)
    async with fresh(engine) as client:
        engine.dead = True
        response = await client.get(path)
    assert response.status_code == 503
    assert response.json() == {"error": "unhealthy", "error_type": "healthcheck"}


@pytest.mark.parametrize(("method", "path", "status"), [("POST", "/nope", 404), ("GET", "/generate", 405), ("GET", "/nope/deeper", 404)])
async def test_routing_errors_are_lorax_json(client: AsyncTestClient, method: str, path: str, status: int) -> None:
    response = await client.request(method, path, json={"inputs": "Hello"})
    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert list(body) == ["error", "error_type"]  # not OpenAI's {"error": {...}}
    assert isinstance(body["error"], str) and isinstance(body["error_type"], str)


async def test_openapi_documents_both_dialects(client: AsyncTestClient) -> None:
    response = await client.get("/docs/openapi.json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    for path in ("/generate", "/generate_stream", "/", "/v1/chat/completions"):
        assert path in paths, path
    assert "post" in paths["/generate"] and "post" in paths["/"]
