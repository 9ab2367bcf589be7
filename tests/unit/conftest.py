"""Fixtures and helpers for the fast unit tests: the loragate app on the synthetic engine.

- ``engine``: a fresh :class:`SyntheticEngine` ("synth", max_model_len 512). Override its options
  per test by parametrizing ``engine_kwargs``, e.g.
  ``@pytest.mark.parametrize("engine_kwargs", [{"eos_after": 5}])``.
- ``client``: a Litestar ``AsyncTestClient`` over the app (responses are buffered: use it for
  whole bodies, not for timing).
- ``synthetic_server``: the same app under a real uvicorn server on 127.0.0.1 (for disconnects and for
  the ``openai`` SDK over real HTTP).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import tempfile
from dataclasses import dataclass
from typing import Any, AsyncIterator

import pytest
import httpx
import uvicorn
from litestar import Litestar
from litestar.testing import AsyncTestClient

from app.config import LoRAModule, ServerConfig
from app.engine.synthetic import SyntheticEngine
from app.server import create_app

BASE = "synth"
ADAPTER = "lora-a"
ADAPTER_ROOT = tempfile.mkdtemp(prefix="loragate-unit-adapters-")


def write_adapter(directory: str | os.PathLike, *, r: int = 8, **config: Any) -> str:
    """A minimal PEFT LoRA adapter directory (config and an empty weights file): enough for the
    registry's checks; the synthetic engine never reads weights."""
    os.makedirs(directory, exist_ok=True)
    body = {"peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "target_modules": ["q_proj", "v_proj"], **config}
    with open(os.path.join(directory, "adapter_config.json"), "w") as f:
        json.dump(body, f)
    open(os.path.join(directory, "adapter_model.safetensors"), "wb").close()
    return os.fspath(directory)


ADAPTER_PATH = write_adapter(os.path.join(ADAPTER_ROOT, ADAPTER))
MAX_MODEL_LEN = 512
USER = [{"role": "user", "content": "Tell me about foxes."}]

logging.getLogger("httpx").setLevel(logging.WARNING)  # it logs every request at INFO


# -- app construction ------------------------------------------------------------------------


def make_app(
    engine: SyntheticEngine, *, adapters: tuple[tuple[str, str], ...] = ((ADAPTER, ADAPTER_PATH),), **config: Any
) -> Litestar:
    """The loragate app serving ``engine`` with the given ``(name, path)`` adapters; ``config``
    overrides other :class:`ServerConfig` fields (limits, API keys, CORS...)."""

    @contextlib.asynccontextmanager
    async def factory(config: ServerConfig) -> AsyncIterator[SyntheticEngine]:
        yield engine

    server_config = ServerConfig(
        engine="synthetic",
        lora_modules=tuple(LoRAModule(name=n, path=p) for n, p in adapters),
        adapter_roots=(ADAPTER_ROOT,),
        adapter_source="local",
        adapter_cache_dir=os.path.join(ADAPTER_ROOT, ".cache"),
        **config,
    )
    return create_app(server_config, engine_factory=factory)


@pytest.fixture
def engine_kwargs() -> dict[str, Any]:
    return {}


@pytest.fixture
def engine(engine_kwargs: dict[str, Any]) -> SyntheticEngine:
    return SyntheticEngine(**{"name": BASE, "max_model_len": MAX_MODEL_LEN, **engine_kwargs})


@pytest.fixture
def app(engine: SyntheticEngine) -> Litestar:
    return make_app(engine)


@pytest.fixture
async def client(app: Litestar) -> AsyncIterator[AsyncTestClient]:
    async with AsyncTestClient(app) as c:
        yield c


# -- a real HTTP server ----------------------------------------------------------------------


@dataclass
class SyntheticServer:
    base_url: str  # e.g. http://127.0.0.1:54321
    engine: SyntheticEngine


@contextlib.asynccontextmanager
async def serve(engine: SyntheticEngine, app: Litestar | None = None) -> AsyncIterator[SyntheticServer]:
    """Run ``app`` (default: the app on ``engine``) under uvicorn, in this event loop, on a free
    local port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app or make_app(engine),
        loop="asyncio",
        lifespan="on",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        for _ in range(500):
            if server.started or task.done():
                break
            await asyncio.sleep(0.01)
        if not server.started:
            if task.done():
                task.result()  # surface the start-up error
            raise RuntimeError("uvicorn did not start")
        yield SyntheticServer(base_url=f"http://127.0.0.1:{port}", engine=engine)
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, timeout=5)
        sock.close()


@pytest.fixture
async def synthetic_server(engine: SyntheticEngine) -> AsyncIterator[SyntheticServer]:
    async with serve(engine) as live:
        yield live


# -- helpers ---------------------------------------------------------------------------------


class EventReader:
    """Reads a streaming response's SSE events incrementally (one body iterator for its life)."""

    def __init__(self, response: httpx.Response) -> None:
        self._chunks = response.aiter_raw()
        self._buffer = b""

    async def next(self) -> bytes | None:
        """The next event, or ``None`` at the end of the body."""
        while b"\n\n" not in self._buffer:
            try:
                self._buffer += await self._chunks.__anext__()
            except StopAsyncIteration:
                return None
        event, self._buffer = self._buffer.split(b"\n\n", 1)
        return event

    async def take(self, count: int) -> list[bytes]:
        """The next ``count`` events, fewer if the body ends first."""
        events = []
        while len(events) < count:
            event = await self.next()
            if event is None:
                break
            events.append(event)
        return events


def sse_events(body: bytes) -> list[bytes]:
    """The raw events of an SSE body (split on the blank line that ends each event)."""
    assert body.endswith(b"\n\n"), f"the SSE body does not end with a blank line: {body[-60:]!r}"
    return body[:-2].split(b"\n\n")


def sse_payloads(body: bytes) -> list[Any]:
    """The JSON payloads of an OpenAI SSE body, checking the framing: every event is one
    ``data: `` line and the last one is exactly ``data: [DONE]`` (not included in the result)."""
    events = sse_events(body)
    for event in events:
        assert event.startswith(b"data: "), f"event without `data: `: {event[:80]!r}"
        assert b"\n" not in event, f"multi-line event: {event[:80]!r}"
    assert events[-1] == b"data: [DONE]"
    assert events.count(b"data: [DONE]") == 1
    return [json.loads(e[len(b"data: ") :]) for e in events[:-1]]


def assert_openai_error(response: Any, status: int, param: str | None = ..., code: Any = ...) -> dict[str, Any]:
    """Check an OpenAI-shaped error response and return its ``error`` object."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    if param is not ...:
        assert error["param"] == param, error
    if code is not ...:
        assert error["code"] == code, error
    return error


def chat_body(model: str = BASE, messages: list[dict[str, Any]] | None = None, **kwargs: Any) -> dict[str, Any]:
    return {"model": model, "messages": USER if messages is None else messages, **kwargs}
