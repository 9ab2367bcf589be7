"""The Litestar app factory and its lifespan: the engine is built on start-up and shut down on exit.

The app mounts both dialects (this is the only module in ``app/`` that imports them). Shared state
lives on ``app.state``: ``engine``, ``registry``, ``pipeline``; route handlers receive the
:class:`~app.pipeline.Pipeline` by dependency injection.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import msgspec
from litestar import Litestar, Request, Response, get
from litestar.datastructures import State
from litestar.config.cors import CORSConfig
from litestar.di import Provide
from litestar.middleware import DefineMiddleware
from litestar.exceptions import HTTPException
from litestar.openapi import OpenAPIConfig

from app.adapters import AdapterRegistry
from app.adapters.sources import AdapterSources
from app.config import ServerConfig
from app.engine.base import Engine
from app.errors import EngineDeadError
from app.metrics import metrics, track_engine
from app.pipeline import Pipeline
from app.types import GenerationRequest, SamplingOptions
from app.security import APIKeyMiddleware, api_keys_from
from app.sse import ClientDisconnected
from app.tracking import MetricsMiddleware

logger = logging.getLogger("loragate")

EngineFactory = Callable[[ServerConfig], "contextlib.AbstractAsyncContextManager[Engine]"]


@contextlib.asynccontextmanager
async def build_engine(config: ServerConfig) -> AsyncIterator[Engine]:
    """Start the engine ``config`` asks for and shut it down on exit.

    With ``config.model`` unset, the built-in demo model is built once (cached) and served with
    its adapters. Raises vLLM's ``RuntimeError`` when the engine cannot start."""
    if config.engine == "synthetic":
        from app.engine.synthetic import SyntheticEngine

        engine: Engine = SyntheticEngine(
            name=config.served_model_name or "synthetic",
            max_model_len=config.max_model_len or 2048,
            token_interval=config.synthetic_token_interval,
        )
    else:
        from app.engine.vllm import VLLMEngine
        from app.engine.vllm_args import engine_args

        model = config.model
        assert model is not None, "resolve the demo model before building the engine"
        # LoRA is on unless disabled: any request may name an adapter to load on demand.
        enable_lora = config.enable_lora if config.enable_lora is not None else True
        args = engine_args(config, model=model, enable_lora=enable_lora)
        engine = await VLLMEngine.start(args, served_model_name=config.served_model_name or model)
    try:
        yield engine
    finally:
        await engine.shutdown()


def _lifespan(config: ServerConfig, engine_factory: EngineFactory) -> Callable[[Litestar], "contextlib.AbstractAsyncContextManager[None]"]:
    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with engine_factory(config) as engine:
            registry = AdapterRegistry(
                engine,
                engine.info.name,
                sources=AdapterSources(
                    roots=config.adapter_roots,
                    cache_dir=config.adapter_cache_dir or Path.home() / ".cache" / "loragate" / "adapters",
                    s3_endpoint_url=config.s3_endpoint_url,
                ),
                default_source=config.adapter_source,
                capacity=config.max_cpu_loras or config.max_loras,
            )
            for module in config.lora_modules:
                spec = await registry.register(module.name, module.path)
                logger.info("adapter %s loaded (id %d)", spec.name, spec.int_id)
            app.state.engine = engine
            app.state.registry = registry
            app.state.pipeline = Pipeline(
                engine, registry, max_concurrent=config.max_concurrent_requests, max_n=config.max_n,
                max_stop_sequences=config.max_stop_sequences, max_output_tokens=config.max_output_tokens,
            )
            track_engine(engine)
            app.state.ready = await _can_generate(app.state.pipeline)
            logger.info("serving %s (max_model_len %d)", engine.info.name, engine.info.max_model_len)
            try:
                yield
            finally:
                track_engine(None)

    return lifespan


async def _can_generate(pipeline: Pipeline) -> bool:
    """Generate one token through the whole pipeline: the proof that the engine can serve."""
    try:
        prompt = await pipeline.engine.render_text("ready")
        request = GenerationRequest(request_id=f"ready-{uuid.uuid4().hex}", prompt=prompt,
                                    sampling=SamplingOptions(max_tokens=1, temperature=0.0))
        result = await pipeline.run(request)
    except Exception:
        logger.exception("the engine failed its first generation")
        return False
    return result.usage.completion_tokens == 1


def _pipeline(state: State) -> Pipeline:
    return state.pipeline


async def health_response(state: State) -> Response[bytes]:
    """200 with an empty body while the engine can serve; 503 with LoRAX's health error body once it
    is dead (LoRAX ``router/src/server.rs`` ``health``)."""
    try:
        await state.engine.check_health()
    except EngineDeadError:
        return Response(b'{"error":"unhealthy","error_type":"healthcheck"}', status_code=503, media_type="application/json")
    return Response(b"", status_code=200)


@get("/ready", tags=["health"], summary="Readiness")
async def ready(state: State) -> Response[bytes]:
    """Readiness: 200 once the engine has generated a token at start-up and while it is alive;
    503 otherwise (an orchestrator sends no traffic until then)."""
    if not getattr(state, "ready", False):
        return Response(b'{"error":"not ready","error_type":"healthcheck"}', status_code=503,
                        media_type="application/json")
    return await health_response(state)


@get("/health", tags=["health"], summary="Health")
async def health(state: State) -> Response[bytes]:
    """Liveness: 200 while the engine can serve, 503 once it is dead."""
    return await health_response(state)


def _client_disconnected(_: object, __: ClientDisconnected) -> Response[bytes]:
    # Nobody reads this: the client is gone. 499 is the de-facto "client closed request" status.
    return Response(b"", status_code=499)


def create_app(config: ServerConfig, *, engine_factory: EngineFactory = build_engine) -> Litestar:
    """The loragate ASGI app for ``config``. ``engine_factory`` builds the engine inside the
    lifespan (tests pass one that yields a synthetic engine)."""
    from native_api.errors import handle_http_error as native_http_error
    from native_api.routes import native_router
    from openai_compat.errors import handle_http_error as openai_http_error
    from openai_compat.routes import openai_router

    def unauthorized(scope: Any) -> tuple[int, bytes]:
        if str(scope.get("path", "")).startswith("/v1/"):
            body = {"error": {"message": "Invalid or missing API key: send `Authorization: Bearer <key>`.",
                              "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}}
        else:
            body = {"error": "Invalid or missing API key: send `Authorization: Bearer <key>`.",
                    "error_type": "unauthorized"}
        return 401, msgspec.json.encode(body)

    def http_error(request: Request, exc: HTTPException) -> Response[Any]:
        # Routing errors (unknown path, wrong method) happen before any router's own handlers:
        # answer them in the shape of the dialect the path belongs to.
        if request.url.path.startswith("/v1/"):
            return openai_http_error(request, exc)
        return native_http_error(request, exc)

    return Litestar(
        route_handlers=[health, ready, metrics, openai_router, native_router],
        lifespan=[_lifespan(config, engine_factory)],
        dependencies={"pipeline": Provide(_pipeline, sync_to_thread=False)},
        exception_handlers={ClientDisconnected: _client_disconnected, HTTPException: http_error},
        middleware=[
            MetricsMiddleware,
            DefineMiddleware(
                APIKeyMiddleware, keys=api_keys_from(config.api_keys), open_paths=config.open_paths,
                unauthorized=unauthorized,
            ),
        ],
        request_max_body_size=config.max_request_body_bytes,
        logging_config=None,  # keep the CLI's root handler (level and secret redaction) in place
        cors_config=CORSConfig(allow_origins=list(config.cors_allow_origins)) if config.cors_allow_origins else None,
        openapi_config=OpenAPIConfig(title="loragate", version="0.1.0", path="/docs"),
        debug=False,
    )
