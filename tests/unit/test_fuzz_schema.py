"""Schema-driven fuzzing of both dialects: schemathesis generates request bodies from the server's own
OpenAPI document (``/docs/openapi.json``), valid ones and deliberately invalid ones, and sends them to
``loragate serve --engine synthetic`` running in a subprocess (the production stack: uvicorn with
uvloop and httptools).

Every answer must be below 500; every 4xx must be JSON in its dialect's error shape (paths under
``/v1/``: ``{"error": {"message", "type", "param", "code"}}``; the LoRAX paths:
``{"error": str, "error_type": str}``), and so must every error event inside an SSE stream. After the
fuzzing, the process is alive, ``/health`` answers 200 and ordinary requests of both dialects succeed.

Bounded: ``LORAGATE_FUZZ_EXAMPLES`` examples per operation and generation mode (default 40),
derandomized so that a run is reproducible; a larger count, or another ``LORAGATE_FUZZ_SEED``,
explores further. The server is offline
(``HF_HUB_OFFLINE``, an S3 endpoint that refuses connections) so that no fuzzed adapter id reaches
the network.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, assume, given, seed, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from tests.unit.conftest import write_adapter

BASE = "synth"
MAX_EXAMPLES = int(os.environ.get("LORAGATE_FUZZ_EXAMPLES", "40"))
SEED = os.environ.get("LORAGATE_FUZZ_SEED")  # set: explore other examples (reproducibly, for that seed)
MAX_TOKENS = 8  # generation is not what is being fuzzed: keep every request short
REQUEST_TIMEOUT = 10.0  # seconds; a request slower than this is a hang
INTERNAL = "Internal error while generating."  # app/errors.py as_loragate_error: any unexpected exception

POST_OPERATIONS = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/load_lora_adapter",
    "/v1/unload_lora_adapter",
    "/",
    "/invocations",
    "/generate",
    "/generate_stream",
    "/tokenize",
]
GET_OPERATIONS = ["/health", "/ready", "/metrics", "/v1/models", "/info"]
OPERATIONS = {("POST", p) for p in POST_OPERATIONS} | {("GET", p) for p in GET_OPERATIONS}


# -- the server -----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LiveServer:
    base_url: str
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """``loragate serve --engine synthetic`` with one local adapter, offline."""
    root = tmp_path_factory.mktemp("fuzz-adapters")
    adapter = write_adapter(root / "lora-a")
    port = _free_port()
    log_path = root / "server.log"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(root / "hf-home"),
        "AWS_ACCESS_KEY_ID": "fuzz",
        "AWS_SECRET_ACCESS_KEY": "fuzz",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_MAX_ATTEMPTS": "1",
    }
    command = [
        sys.executable, "-m", "app.cli", "serve", "--engine", "synthetic", "--served-model-name", BASE,
        "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "512", "--log-level", "warning",
        "--adapter-root", str(root), "--adapter-source", "local", "--adapter-cache-dir", str(root / "cache"),
        "--s3-endpoint-url", "http://127.0.0.1:9", "--lora-modules", f"lora-a={adapter}",
        "--graceful-shutdown-timeout", "2",
    ]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=Path(__file__).resolve().parents[2], env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
    server = LiveServer(base_url=f"http://127.0.0.1:{port}", process=process, log_path=log_path)
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                pytest.fail(f"the server exited at start-up:\n{server.log()}")
            try:
                if requests.get(f"{server.base_url}/ready", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("the server did not become ready within 30 s")
            time.sleep(0.05)
        yield server
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def api_schema(live_server: LiveServer) -> Any:
    return schemathesis.openapi.from_url(f"{live_server.base_url}/docs/openapi.json")


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


# -- checks -------------------------------------------------------------------------------------


def assert_error_shape(path: str, body: Any, where: str) -> None:
    """``body`` is an error in the dialect ``path`` belongs to."""
    if path.startswith("/v1/"):
        assert isinstance(body, dict) and set(body) == {"error"}, f"{where}: not an OpenAI error: {body!r}"
        error = body["error"]
        assert isinstance(error, dict) and set(error) == {"message", "type", "param", "code"}, f"{where}: {body!r}"
        assert isinstance(error["message"], str) and error["message"], f"{where}: {body!r}"
        assert isinstance(error["type"], str) and error["type"], f"{where}: {body!r}"
        assert error["param"] is None or isinstance(error["param"], str), f"{where}: {body!r}"
    else:
        assert isinstance(body, dict) and set(body) == {"error", "error_type"}, f"{where}: not a LoRAX error: {body!r}"
        assert isinstance(body["error"], str) and body["error"], f"{where}: {body!r}"
        assert isinstance(body["error_type"], str) and body["error_type"], f"{where}: {body!r}"


def check_response(path: str, response: Any, request_text: str) -> None:
    status = response.status_code
    where = f"{request_text}\n-> {status}"
    assert status < 500, f"{where}: server error: {response.content[:500]!r}"
    content_type = (response.headers.get("content-type") or [""])[0]  # schemathesis: name -> list of values
    if status >= 400:
        assert content_type.startswith("application/json"), f"{where}: error body is {content_type!r}"
        body = json.loads(response.content)
        assert_error_shape(path, body, where)
        # An unexpected exception is a 500 in OpenAI's dialect but a 424 "generation" error in
        # LoRAX's (native_api/errors.py handle_unexpected): recognise it by its message.
        assert INTERNAL not in json.dumps(body), f"{where}: an unexpected exception: {body!r}"
    elif content_type.startswith("text/event-stream"):
        for event in response.content.decode("utf-8").split("\n\n"):
            data = event.removeprefix("data:").strip()
            if not data or data == "[DONE]":
                continue
            payload = json.loads(data)
            if isinstance(payload, dict) and "error" in payload:
                assert_error_shape(path, payload, f"{where} (SSE event)")


def _clamp(body: Any) -> None:
    """Keep generation short: cap the lengths a fuzzed body asks for (in place)."""
    if not isinstance(body, dict):
        return
    for key in ("max_tokens", "max_completion_tokens", "max_new_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > MAX_TOKENS:
            body[key] = MAX_TOKENS
    if "messages" in body and "max_tokens" not in body and "max_completion_tokens" not in body:
        body["max_tokens"] = MAX_TOKENS  # (completions default to 16 tokens)
    if isinstance(body.get("parameters"), dict):
        params = body["parameters"]
        value = params.get("max_new_tokens")
        if value is None or (isinstance(value, int) and not isinstance(value, bool) and value > MAX_TOKENS):
            params["max_new_tokens"] = MAX_TOKENS


# A fuzzed model name almost never exists, which ends most requests at the adapter lookup: half of
# the bodies name the base model or the adapter instead, so that the rest of the pipeline is fuzzed too.
MODEL_OVERRIDES = [None, None, BASE, "lora-a"]


def _override_model(body: Any, model: str | None) -> None:
    if model is None or not isinstance(body, dict):
        return
    if "model" in body:
        body["model"] = model
    if isinstance(body.get("parameters"), dict) and "adapter_id" in body["parameters"]:
        body["parameters"]["adapter_id"] = None if model == BASE else model


def _describe(case: Any) -> str:
    body = case.body if not isinstance(case.body, (bytes, bytearray)) else case.body[:300]
    text = json.dumps(body, default=repr)[:600] if not isinstance(body, (bytes, bytearray)) else repr(body)
    return f"{case.method} {case.path} media_type={case.media_type!r} body={text}"


# -- the tests --------------------------------------------------------------------------------


def test_schema_lists_every_operation(api_schema: Any) -> None:
    """The fuzzing below covers every operation the server documents (a new route must be added)."""
    documented = {(m.upper(), p) for p, ops in api_schema.raw_schema["paths"].items() for m in ops}
    assert documented == OPERATIONS


FUZZ_SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=SEED is None,
    database=None,
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
    suppress_health_check=list(HealthCheck),
    print_blob=False,
)


def _fuzz(api_schema: Any, base_url: str, session: requests.Session, method: str, path: str,
          mode: GenerationMode) -> None:
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode), model=st.sampled_from(MODEL_OVERRIDES))
    def run(case: Any, model: str | None) -> None:
        _clamp(case.body)
        _override_model(case.body, model)
        response = case.call(base_url=base_url, session=session, timeout=REQUEST_TIMEOUT)
        check_response(path, response, _describe(case))

    run = FUZZ_SETTINGS(run)
    if SEED is not None:
        run = seed(int(SEED))(run)
    run()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
@pytest.mark.parametrize("path", POST_OPERATIONS)
def test_fuzz_post(api_schema: Any, live_server: LiveServer, session: requests.Session, path: str,
                   mode: GenerationMode) -> None:
    _fuzz(api_schema, live_server.base_url, session, "POST", path, mode)


@pytest.mark.parametrize("path", GET_OPERATIONS)
def test_fuzz_get(api_schema: Any, live_server: LiveServer, session: requests.Session, path: str) -> None:
    _fuzz(api_schema, live_server.base_url, session, "GET", path, GenerationMode.POSITIVE)


def test_server_logged_no_unexpected_error(live_server: LiveServer) -> None:
    """Every error the fuzzing caused was an expected one: none was logged with a traceback."""
    log = live_server.log()
    assert "Traceback" not in log and "unexpected error" not in log, log[-3000:]


def test_server_is_healthy_after_fuzzing(live_server: LiveServer, session: requests.Session) -> None:
    assert live_server.process.poll() is None, f"the server died:\n{live_server.log()}"
    base = live_server.base_url
    assert session.get(f"{base}/health", timeout=5).status_code == 200
    assert session.get(f"{base}/ready", timeout=5).status_code == 200
    chat = session.post(
        f"{base}/v1/chat/completions", timeout=REQUEST_TIMEOUT,
        json={"model": BASE, "messages": [{"role": "user", "content": "Tell me about foxes."}], "max_tokens": 5},
    )
    assert chat.status_code == 200, chat.text
    assert chat.json()["choices"][0]["message"]["content"]
    generate = session.post(f"{base}/generate", timeout=REQUEST_TIMEOUT,
                            json={"inputs": "Tell me about foxes.", "parameters": {"max_new_tokens": 5}})
    assert generate.status_code == 200, generate.text
    assert generate.json()["generated_text"]
