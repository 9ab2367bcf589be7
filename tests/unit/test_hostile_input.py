"""Hostile input, in both dialects: malformed JSON, JSON that is not an object, wrong content types,
empty and oversized bodies, deeply nested JSON, invalid UTF-8, prompts of control characters, NUL
bytes and lone surrogates, numbers no engine can hold. Each gets a clear 4xx in its dialect's error
shape (or, for odd but valid text, a normal answer), never a 5xx, and the server stays healthy.

Dialect shapes: paths under ``/v1/`` answer ``{"error": {"message", "type", "param", "code"}}``
(OpenAI); the LoRAX paths answer ``{"error": str, "error_type": str}``. What LoRAX itself answers
(shared/reference/lorax-api.md §2.6, axum's ``Json`` extractor): 400 for a body that is not JSON, 422
for JSON of the wrong shape, 415 for a content type other than JSON, 413 for a body over the limit.
vLLM answers 400 for all but the last (shared/reference/vllm-engine.md, "Errors").
"""

from __future__ import annotations

import json
from typing import Any, AsyncIterator

import httpx
import pytest
import pytest_asyncio
from litestar.testing import AsyncTestClient

from app.engine.synthetic import SyntheticEngine
from tests.unit.conftest import BASE, MAX_MODEL_LEN, make_app, serve, sse_events

# No test here changes the engine or the adapters: one app (and event loop) for the module.
shared_loop = pytest.mark.asyncio(loop_scope="module")
pytestmark = shared_loop


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client() -> AsyncIterator[AsyncTestClient]:
    async with AsyncTestClient(make_app(SyntheticEngine(name=BASE, max_model_len=MAX_MODEL_LEN))) as c:
        yield c


JSON = {"content-type": "application/json"}
USER = [{"role": "user", "content": "hi"}]

# A small valid body per POST route that generates (or tokenizes).
VALID: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"model": BASE, "messages": USER, "max_tokens": 3},
    "/v1/completions": {"model": BASE, "prompt": "hi", "max_tokens": 3},
    "/generate": {"inputs": "hi", "parameters": {"max_new_tokens": 3}},
    "/generate_stream": {"inputs": "hi", "parameters": {"max_new_tokens": 3}},
    "/": {"inputs": "hi", "parameters": {"max_new_tokens": 3}},
    "/tokenize": {"inputs": "hi"},
}
GENERATING = list(VALID)
# Every POST route that takes a JSON body.
BODY_PATHS = [*GENERATING, "/invocations", "/v1/load_lora_adapter", "/v1/unload_lora_adapter"]


def is_openai(path: str) -> bool:
    return path.startswith("/v1/")


def assert_dialect_error(path: str, response: Any, status: int | tuple[int, ...] | None = None) -> str:
    """``response`` is an error in the shape of the dialect ``path`` belongs to, with ``status``
    (default: any 4xx); returns its message."""
    if status is None:
        assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    else:
        allowed = status if isinstance(status, tuple) else (status,)
        assert response.status_code in allowed, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/json"), response.headers["content-type"]
    body = response.json()
    if is_openai(path):
        assert isinstance(body, dict) and set(body) == {"error"}, body
        error = body["error"]
        assert set(error) == {"message", "type", "param", "code"}, error
        assert isinstance(error["message"], str) and error["message"], error
        assert isinstance(error["type"], str) and error["type"], error
        return error["message"]
    assert isinstance(body, dict) and list(body) == ["error", "error_type"], body
    assert isinstance(body["error"], str) and body["error"], body
    assert isinstance(body["error_type"], str) and body["error_type"], body
    return body["error"]


def assert_served(path: str, response: Any) -> Any:
    """A normal answer whose body parses (JSON, or SSE events of JSON); returns the parsed body
    (for SSE, the list of event payloads)."""
    assert response.status_code == 200, response.text[:300]
    if response.headers["content-type"].startswith("text/event-stream"):
        payloads = []
        for event in sse_events(response.content):
            data = event.decode("utf-8").removeprefix("data:").strip()
            if data != "[DONE]":
                payloads.append(json.loads(data))
        assert payloads and not any(isinstance(p, dict) and "error" in p for p in payloads), payloads[-1:]
        return payloads
    return response.json()


async def post_raw(client: AsyncTestClient, path: str, content: bytes, headers: dict[str, str] | None = None) -> Any:
    return await client.post(path, content=content, headers=JSON if headers is None else headers)


def raw_json(body: Any) -> bytes:
    """``body`` as JSON bytes, non-ASCII as ``\\u`` escapes (so lone surrogates stay escapes)."""
    return json.dumps(body, ensure_ascii=True).encode("ascii")


# -- malformed JSON and JSON that is not an object -----------------------------------------------

MALFORMED = [
    pytest.param(b'{"model": "synth", ', id="truncated"),
    pytest.param(b'{"inputs": "hi",}', id="trailing-comma"),
    pytest.param(b"{'inputs': 'hi'}", id="single-quotes"),
    pytest.param(b'{"inputs": "hi"} {"inputs": "hi"}', id="two-documents"),
    pytest.param(b'{"inputs": "hi"', id="unclosed"),
    pytest.param(b"inputs=hi", id="not-json"),
    pytest.param(b'{"inputs": "\\x41"}', id="bad-escape"),
    pytest.param(b'{"inputs": "a\nb"}', id="raw-newline-in-string"),
    pytest.param(b"\xef\xbb\xbf" + b'{"inputs": "hi"}', id="utf8-bom"),
    pytest.param(b"\xff\xfe{\x00}\x00", id="utf16-bytes"),
    pytest.param(b'   \n', id="whitespace-only"),
]


@pytest.mark.parametrize("content", MALFORMED)
@pytest.mark.parametrize("path", BODY_PATHS)
async def test_malformed_json_is_400(client: AsyncTestClient, path: str, content: bytes) -> None:
    message = assert_dialect_error(path, await post_raw(client, path, content), 400)
    if not is_openai(path):
        assert message.startswith("Failed to parse the request body as JSON: ")


NOT_AN_OBJECT = [
    pytest.param(b"[]", id="empty-list"),
    pytest.param(b'[{"inputs": "hi"}]', id="list"),
    pytest.param(b'"hi"', id="string"),
    pytest.param(b"null", id="null"),
    pytest.param(b"42", id="number"),
    pytest.param(b"true", id="true"),
]


@pytest.mark.parametrize("content", NOT_AN_OBJECT)
@pytest.mark.parametrize("path", BODY_PATHS)
async def test_json_that_is_not_an_object_is_4xx(client: AsyncTestClient, path: str, content: bytes) -> None:
    # OpenAI: 400; LoRAX: 422 "Failed to deserialize the JSON body into the target type".
    assert_dialect_error(path, await post_raw(client, path, content), 400 if is_openai(path) else 422)


@pytest.mark.parametrize("headers", [JSON, {}], ids=["json", "no-content-type"])
@pytest.mark.parametrize("path", BODY_PATHS)
async def test_empty_body_is_4xx(client: AsyncTestClient, path: str, headers: dict[str, str]) -> None:
    assert_dialect_error(path, await post_raw(client, path, b"", headers))


@pytest.mark.parametrize("path", BODY_PATHS)
async def test_empty_body_says_the_body_is_missing(client: AsyncTestClient, path: str) -> None:
    response = await post_raw(client, path, b"")
    message = assert_dialect_error(path, response, 400)
    assert "'data'" not in message and "`data`" not in message, message
    if is_openai(path):
        assert response.json()["error"]["param"] is None
    else:
        assert message.startswith("Failed to parse the request body as JSON: ")


# -- content types ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", BODY_PATHS)
async def test_form_and_multipart_bodies_are_4xx(client: AsyncTestClient, path: str) -> None:
    form = await client.post(path, data={"inputs": "hi", "model": BASE, "prompt": "hi"})
    assert_dialect_error(path, form)
    multipart = await client.post(path, files={"inputs": ("inputs.json", b'{"inputs": "hi"}', "application/json")})
    assert_dialect_error(path, multipart)


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8", "Application/JSON"])
@pytest.mark.parametrize("path", GENERATING)
async def test_json_content_types_are_served(client: AsyncTestClient, path: str, content_type: str) -> None:
    assert_served(path, await post_raw(client, path, raw_json(VALID[path]), {"content-type": content_type}))


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/xml", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
     "application/octet-stream"],
)
@pytest.mark.parametrize("path", GENERATING)
async def test_json_body_under_another_content_type_is_refused(
    client: AsyncTestClient, path: str, content_type: str
) -> None:
    response = await post_raw(client, path, raw_json(VALID[path]), {"content-type": content_type})
    assert_dialect_error(path, response, (400, 415) if is_openai(path) else 415)


# -- sizes ----------------------------------------------------------------------------------------

LIMIT = 2048


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def small_client() -> AsyncIterator[AsyncTestClient]:
    app = make_app(SyntheticEngine(name=BASE, max_model_len=MAX_MODEL_LEN), max_request_body_bytes=LIMIT)
    async with AsyncTestClient(app) as c:
        yield c


def padded(path: str, size: int) -> bytes:
    """The valid body of ``path`` padded (with an ignored field) to exactly ``size`` bytes."""
    body = dict(VALID.get(path, {"lora_name": "x", "lora_path": "x"}))
    base = len(raw_json({**body, "pad": ""}))
    return raw_json({**body, "pad": "x" * (size - base)})


@pytest.mark.parametrize("path", BODY_PATHS)
async def test_body_over_the_limit_is_413(small_client: AsyncTestClient, path: str) -> None:
    assert_dialect_error(path, await post_raw(small_client, path, padded(path, LIMIT + 1)), 413)
    huge = await post_raw(small_client, path, b"[" * (4 * LIMIT))
    assert_dialect_error(path, huge, 413)


@pytest.mark.parametrize("path", GENERATING)
async def test_body_at_the_limit_is_served(small_client: AsyncTestClient, path: str) -> None:
    content = padded(path, LIMIT)
    assert len(content) == LIMIT
    assert_served(path, await post_raw(small_client, path, content))


async def test_chunked_body_over_the_limit_is_413_over_http() -> None:
    """No Content-Length (chunked transfer): the limit still holds while the body streams in."""
    engine = SyntheticEngine(name=BASE, max_model_len=MAX_MODEL_LEN)
    async with serve(engine, make_app(engine, max_request_body_bytes=LIMIT)) as live:
        async with httpx.AsyncClient(base_url=live.base_url, timeout=20) as http:
            for path in ("/v1/chat/completions", "/generate"):

                async def chunks() -> AsyncIterator[bytes]:
                    yield b'{"inputs": "'
                    for _ in range(64):
                        yield b"x" * 1024
                    yield b'"}'

                assert_dialect_error(path, await http.post(path, content=chunks(), headers=JSON), 413)
            assert (await http.get("/health")).status_code == 200
            assert (await http.post("/generate", json=VALID["/generate"])).status_code == 200


# -- deeply nested JSON -------------------------------------------------------------------------


def nested_lists(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def nested_objects(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


def with_field(path: str, field: bytes, value: bytes) -> bytes:
    """The valid body of ``path`` with one more field ``field`` set to the raw JSON ``value``."""
    body = raw_json(VALID[path])
    return body[:-1] + b', "' + field + b'": ' + value + b"}"


def deep_cases(depth: int) -> list[Any]:
    return [
        *[pytest.param(p, nested_lists(depth), id=f"{p}-lists") for p in BODY_PATHS],
        *[pytest.param(p, nested_objects(depth), id=f"{p}-objects") for p in BODY_PATHS],
        pytest.param("/v1/chat/completions", with_field("/v1/chat/completions", b"tools", nested_lists(depth)),
                     id="chat-tools"),
        pytest.param("/v1/chat/completions",
                     with_field("/v1/chat/completions", b"response_format",
                                b'{"type": "json_schema", "json_schema": {"schema": ' + nested_objects(depth) + b"}}"),
                     id="chat-json-schema"),
        pytest.param("/generate",
                     with_field("/generate", b"response_format", b'{"schema": ' + nested_objects(depth) + b"}"),
                     id="generate-schema"),
        pytest.param("/generate", with_field("/generate", b"unknown", nested_lists(depth)), id="generate-ignored-field"),
    ]


@pytest.mark.parametrize(("path", "content"), deep_cases(64))
async def test_moderately_nested_json_is_served_or_4xx(client: AsyncTestClient, path: str, content: bytes) -> None:
    response = await post_raw(client, path, content)
    if response.status_code != 200:
        assert_dialect_error(path, response)


@pytest.mark.parametrize(("path", "content"), deep_cases(10_000))
async def test_deeply_nested_json_is_400(client: AsyncTestClient, path: str, content: bytes) -> None:
    assert_dialect_error(path, await post_raw(client, path, content), (400, 422))


# -- invalid UTF-8 ------------------------------------------------------------------------------

INVALID_UTF8 = [
    pytest.param(b"\xff\xfe", id="ff-fe"),
    pytest.param(b"caf\xe9", id="latin-1"),
    pytest.param(b"\xc0\xaf", id="overlong"),
    pytest.param(b"\xe2\x82", id="truncated-sequence"),
    pytest.param(b"\xed\xa0\x80", id="encoded-surrogate"),
    pytest.param(b"\xf4\x90\x80\x80", id="above-u10ffff"),
]


@pytest.mark.parametrize("path", BODY_PATHS)
async def test_invalid_utf8_outside_strings_is_400(client: AsyncTestClient, path: str) -> None:
    assert_dialect_error(path, await post_raw(client, path, b"\xff" + raw_json(VALID.get(path, {}))), 400)


def utf8_cases() -> list[Any]:
    where = {
        "/v1/chat/completions": b'{"model": "synth", "max_tokens": 3, "messages": [{"role": "user", "content": "%s"}]}',
        "/v1/completions": b'{"model": "synth", "max_tokens": 3, "prompt": "%s"}',
        "/generate": b'{"inputs": "%s", "parameters": {"max_new_tokens": 3}}',
        "/generate_stream": b'{"inputs": "%s", "parameters": {"max_new_tokens": 3}}',
        "/tokenize": b'{"inputs": "%s"}',
        "/v1/load_lora_adapter": b'{"lora_name": "%s", "lora_path": "x"}',
    }
    return [
        pytest.param(path, template.replace(b"%s", bad.values[0]), id=f"{path}-{bad.id}")
        for path, template in where.items()
        for bad in INVALID_UTF8
    ] + [pytest.param("/generate", b'{"inputs": "hi", "\xff\xfe": 1}', id="/generate-in-a-key")]


@pytest.mark.parametrize(("path", "content"), utf8_cases())
async def test_invalid_utf8_in_a_string_is_400(client: AsyncTestClient, path: str, content: bytes) -> None:
    assert_dialect_error(path, await post_raw(client, path, content), 400)
