"""LoRAX route handlers: ``POST /`` (and ``/invocations``), ``/generate``, ``/generate_stream``,
``/tokenize``, ``GET /info``, and the health aliases ``GET /`` and ``/ping``.

Routes and behaviour: LoRAX ``router/src/server.rs`` at a7394ba3 (shared/reference/lorax-api.md §1).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import msgspec
from litestar import Request, Response, Router, get, post
from litestar.datastructures import State

from app.errors import LoragateError
from app.pipeline import GenerationStream, Pipeline, collect
from app.server import health_response
from app.security import require_json
from app.sse import SSEResponse, until_disconnect
from app.tracking import track
from app.types import AdapterMerge, FinishReason, GenerationRequest
from native_api.errors import EXCEPTION_HANDLERS, IncompleteGenerationError, stream_error_event
from native_api.mapping import adapter_label, generate_response, rank_sequences, sampling_options
from native_api.schema import GenerateRequest, TokenizeRequest
from native_api.stream import NativeStreamEncoder, native_events
from native_api.timing import response_headers, stream_headers
from native_api.validation import LoraxLimits, LoraxValidationError, validate_length, validate_parameters

VERSION = "0.1.0"


def limits(pipeline: Pipeline) -> LoraxLimits:
    """LoRAX's limits for this engine: inputs may use all of the context but one token."""
    max_len = pipeline.engine.info.max_model_len
    return LoraxLimits(
        max_input_length=max_len - 1, max_total_tokens=max_len, max_stop_sequences=pipeline.max_stop_sequences,
        max_best_of=min(2, pipeline.max_n), max_concurrent_requests=pipeline.max_concurrent,
    )


class _Prepared(msgspec.Struct):
    gen: GenerationRequest
    seed: int | None
    adapter_source: str
    started: float


async def _prepare(data: GenerateRequest, request: Request, pipeline: Pipeline, *, stream: bool) -> _Prepared:
    """Validate as LoRAX does, tokenize, resolve the adapter. Raises LoRAX validation errors and
    :mod:`app.errors` errors."""
    started = time.perf_counter()
    p = data.params
    lim = limits(pipeline)
    validate_parameters(p, data.inputs, lim, stream=stream)
    adapter = p.adapter_id or None  # null or "" mean the base model
    merge = None
    if p.merged_adapters is not None:
        m = p.merged_adapters
        merge = AdapterMerge(
            ids=m.ids, weights=m.weights, strategy=(m.merge_strategy or "linear").lower(), density=m.density,
            majority_sign_method=(m.majority_sign_method or "total").lower(),
        )
    api_token = p.api_token or _bearer(request)
    engine = pipeline.engine
    prompt = await engine.render_text(data.inputs)
    if p.truncate is not None and len(prompt.token_ids) > p.truncate:
        # TGI/LoRAX semantics: keep the last `truncate` tokens of the input.
        prompt = await engine.render_tokens(prompt.token_ids[-p.truncate:])
    validate_length(p, len(prompt.token_ids), lim)
    sampling, seed = sampling_options(p, stream=stream)
    gen = GenerationRequest(
        request_id=f"lorax-{uuid.uuid4().hex}", prompt=prompt, sampling=sampling, adapter=adapter,
        adapter_source=p.adapter_source, api_token=api_token, merge=merge,
    )
    adapter_source = p.adapter_source or pipeline.registry.default_source
    return _Prepared(gen=gen, seed=seed, adapter_source=adapter_source, started=started)


def _bearer(request: Request) -> str | None:
    """LoRAX forwards ``Authorization: Bearer <token>`` as ``api_token`` when the body has none."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


async def _generate(data: GenerateRequest, request: Request, pipeline: Pipeline) -> tuple[dict[str, Any], dict[str, str]]:
    tracker = track(request, request.url.path, adapter_label(data.params), streaming=False)
    prepared = await until_disconnect(request, _prepare(data, request, pipeline, stream=False))
    stream = await until_disconnect(request, pipeline.start(prepared.gen, prompt_param="inputs"))
    result = await until_disconnect(request, collect(stream))
    p = data.params
    ranked = rank_sequences(result)
    if ranked[0].finish_reason in (FinishReason.ABORT, FinishReason.ERROR):
        raise IncompleteGenerationError()
    tracker.finish(ranked[0].finish_reason.value, prompt_tokens=result.usage.prompt_tokens,
                   generated_tokens=result.usage.completion_tokens, queue_time=result.queue_time)
    body = generate_response(
        pipeline.engine, result, ranked, p, seed=prepared.seed, prefix=data.inputs if p.return_full_text else ""
    )
    headers = response_headers(
        pipeline.engine.info, stream, result, generated=len(ranked[0].token_ids), started=prepared.started,
        characters=len(data.inputs), adapter_label=adapter_label(p), adapter_source=prepared.adapter_source,
    )
    return body, headers


async def _generate_stream(data: GenerateRequest, request: Request, pipeline: Pipeline) -> SSEResponse:
    """Every error, validation included, is an SSE event on a 200 response, as LoRAX sends it."""
    tracker = track(request, request.url.path, adapter_label(data.params), streaming=True)
    adapter_source = data.params.adapter_source or pipeline.registry.default_source
    headers = stream_headers(pipeline.engine.info, len(data.inputs), adapter_label(data.params), adapter_source)
    try:
        prepared = await until_disconnect(request, _prepare(data, request, pipeline, stream=True))
        stream: GenerationStream = await until_disconnect(request, pipeline.start(prepared.gen, prompt_param="inputs"))
    except (LoragateError, LoraxValidationError) as exc:
        tracker.error(exc.kind if isinstance(exc, LoragateError) else "validation")
        return SSEResponse(_one_event(stream_error_event(exc)), headers=headers)
    p = data.params
    events = native_events(
        stream,
        NativeStreamEncoder(pipeline.engine, alternatives=bool(p.return_k_alternatives)),
        prefix=data.inputs if p.return_full_text else "",
        details=p.details,
        seed=prepared.seed,
        tracker=tracker,
    )
    return SSEResponse(events, headers=headers)


async def _one_event(event: bytes):  # type: ignore[no-untyped-def]
    yield event


@post(["/", "/invocations"], status_code=200, tags=["lorax"], summary="Generate (LoRAX compat route)")
async def compat_generate(data: GenerateRequest, request: Request, pipeline: Pipeline) -> Response[Any]:
    """``{"inputs", "parameters", "stream"}``: a JSON array ``[GenerateResponse]``, or the native
    token stream when ``stream`` is true (what lorax-client calls)."""
    if data.stream:
        return await _generate_stream(data, request, pipeline)
    body, headers = await _generate(data, request, pipeline)
    return Response([body], headers=headers)


@post("/generate", status_code=200, tags=["lorax"], summary="Generate")
async def generate(data: GenerateRequest, request: Request, pipeline: Pipeline) -> Response[Any]:
    """One ``GenerateResponse`` object."""
    body, headers = await _generate(data, request, pipeline)
    return Response(body, headers=headers)


@post("/generate_stream", status_code=200, tags=["lorax"], summary="Generate a token stream")
async def generate_stream(data: GenerateRequest, request: Request, pipeline: Pipeline) -> SSEResponse:
    """Native SSE: one ``StreamResponse`` per token, the last with ``generated_text``."""
    return await _generate_stream(data, request, pipeline)


@post("/tokenize", status_code=200, tags=["lorax"], summary="Tokenize")
async def tokenize(data: TokenizeRequest, pipeline: Pipeline) -> list[dict[str, Any]]:
    """A bare array of ``{"id", "text", "start", "stop"}`` (raw vocabulary pieces, character offsets)."""
    spans = pipeline.engine.tokenize(data.inputs, add_special_tokens=data.add_special_tokens)
    return [{"id": s.id, "text": s.text, "start": s.start, "stop": s.stop} for s in spans]


@get("/info", tags=["lorax"], summary="Model info")
async def info(pipeline: Pipeline) -> dict[str, Any]:
    """LoRAX ``Info`` (field order as LoRAX serialises it), plus ``adapter_source``, the default
    source of adapters named by requests."""
    model = pipeline.engine.info
    lim = limits(pipeline)
    return {
        "model_id": model.name,
        "model_sha": None,
        "model_dtype": model.dtype,
        "model_device_type": model.device,
        "model_pipeline_tag": "text-generation",
        "max_concurrent_requests": lim.max_concurrent_requests,
        "max_best_of": lim.max_best_of,
        "max_stop_sequences": lim.max_stop_sequences,
        "max_input_length": lim.max_input_length,
        "max_total_tokens": lim.max_total_tokens,
        "waiting_served_ratio": 1.2,
        "max_batch_total_tokens": lim.max_total_tokens,
        "max_waiting_tokens": 20,
        "validation_workers": 1,
        "eager_prefill": False,
        "version": VERSION,
        "sha": None,
        "docker_label": None,
        "request_logger_url": None,
        "adapter_source": pipeline.registry.default_source,
    }


@get(["/", "/ping"], tags=["lorax"], summary="Health (LoRAX aliases)", include_in_schema=False)
async def health_alias(state: State) -> Response[bytes]:
    """LoRAX's health aliases: 200 with an empty body, 503 once the engine is dead."""
    return await health_response(state)


native_router = Router(
    path="/",
    route_handlers=[compat_generate, generate, generate_stream, tokenize, info, health_alias],
    exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
    before_request=require_json,
)
