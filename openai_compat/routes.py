"""OpenAI route handlers: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``."""

from __future__ import annotations

import time
import uuid
from typing import Any

import msgspec
from litestar import Request, Response, Router, get, post

from app.pipeline import Pipeline, collect
from app.security import require_json
from app.sse import SSEResponse, until_disconnect
from app.tracking import track
from app.types import GenerationRequest
from openai_compat.errors import EXCEPTION_HANDLERS
from openai_compat.mapping import (
    chat_messages,
    chat_response,
    chat_sampling,
    completion_prompts,
    completion_response,
    completion_sampling,
)
from openai_compat.schema import ChatCompletionRequest, CompletionRequest
from openai_compat.stream import ChatStreamEncoder, CompletionStreamEncoder, chat_events, completion_events


def _ids(prefix: str, request: Request) -> tuple[str, str]:
    """The response ``id`` (``{prefix}-{X-Request-Id}`` when the client sends one, as vLLM does) and
    the engine request id, always unique so that clients reusing a header cannot abort each other."""
    unique = uuid.uuid4().hex
    given = request.headers.get("x-request-id")
    response_id = f"{prefix}-{given}" if given else f"{prefix}-{unique}"
    return response_id, f"{prefix}-{unique}"


@post("/chat/completions", status_code=200, tags=["openai"], summary="Create a chat completion")
async def create_chat_completion(data: ChatCompletionRequest, request: Request, pipeline: Pipeline) -> Response[Any]:
    """OpenAI chat completions, streaming (SSE ending in ``data: [DONE]``) or not."""
    tracker = track(request, "/v1/chat/completions", data.model, streaming=data.stream)
    messages = chat_messages(data)
    sampling = chat_sampling(data)
    response_id, request_id = _ids("chatcmpl", request)
    created = int(time.time())
    prompt = await until_disconnect(
        request, pipeline.engine.render_chat(messages, add_generation_prompt=data.add_generation_prompt)
    )
    gen = GenerationRequest(
        request_id=request_id, prompt=prompt, sampling=sampling, adapter=data.model,
        adapter_source=data.adapter_source, api_token=data.api_token,
    )
    stream = await until_disconnect(request, pipeline.start(gen, prompt_param="messages"))
    if data.stream:
        opts = data.stream_options
        encoder = ChatStreamEncoder(pipeline.engine, response_id, created, data.model)
        events = chat_events(
            stream,
            encoder,
            include_usage=bool(opts and opts.include_usage),
            continuous_usage=bool(opts and opts.continuous_usage_stats),
            tracker=tracker,
        )
        return SSEResponse(events)
    result = await until_disconnect(request, collect(stream))
    tracker.finish(result.sequences[0].finish_reason.value, prompt_tokens=result.usage.prompt_tokens,
                   generated_tokens=result.usage.completion_tokens, queue_time=result.queue_time)
    return Response(chat_response(pipeline.engine, result, response_id=response_id, created=created, model=data.model))


@post("/completions", status_code=200, tags=["openai"], summary="Create a completion")
async def create_completion(data: CompletionRequest, request: Request, pipeline: Pipeline) -> Response[Any]:
    """OpenAI legacy completions: one prompt or a list (strings or token ids), streaming or not."""
    tracker = track(request, "/v1/completions", data.model, streaming=data.stream)
    sampling = completion_sampling(data)
    response_id, request_id = _ids("cmpl", request)
    created = int(time.time())
    engine = pipeline.engine
    prompts = []
    for p in completion_prompts(data):
        render = engine.render_text(p) if isinstance(p, str) else engine.render_tokens(p)
        prompts.append(await until_disconnect(request, render))
    gens = [
        GenerationRequest(
            request_id=request_id if len(prompts) == 1 else f"{request_id}-{i}",
            prompt=prompt,
            sampling=sampling,
            adapter=data.model,
            adapter_source=data.adapter_source,
            api_token=data.api_token,
        )
        for i, prompt in enumerate(prompts)
    ]
    echo_texts = None
    if data.echo:
        echo_texts = [p.text if p.text is not None else engine.decode(p.token_ids) for p in prompts]
    streams = await until_disconnect(request, pipeline.start_many(gens, prompt_param="prompt"))
    if data.stream:
        opts = data.stream_options
        encoder = CompletionStreamEncoder(engine, response_id, created, data.model)
        events = completion_events(
            streams,
            encoder,
            echo_texts=echo_texts,
            include_usage=bool(opts and opts.include_usage),
            continuous_usage=bool(opts and opts.continuous_usage_stats),
            tracker=tracker,
        )
        return SSEResponse(events)

    async def collect_all() -> list[Any]:
        try:
            return [await collect(s) for s in streams]
        finally:
            for s in streams:
                await s.aclose()

    results = await until_disconnect(request, collect_all())
    queue = [r.queue_time for r in results if r.queue_time is not None]
    tracker.finish(
        results[0].sequences[0].finish_reason.value,
        prompt_tokens=sum(r.usage.prompt_tokens for r in results),
        generated_tokens=sum(r.usage.completion_tokens for r in results),
        queue_time=max(queue) if queue else None,
    )
    body = completion_response(
        engine, results, echo_texts=echo_texts, response_id=response_id, created=created, model=data.model
    )
    return Response(body)


@get("/models", tags=["openai"], summary="List models")
async def list_models(pipeline: Pipeline) -> dict[str, Any]:
    """The base model and every adapter; an adapter's ``parent`` is the base model's name and its
    ``root`` the path it was loaded from (the shape vLLM serves)."""
    info = pipeline.engine.info
    base = {
        "id": info.name,
        "object": "model",
        "created": pipeline.created,
        "owned_by": "loragate",
        "root": info.source,
        "parent": None,
        "max_model_len": info.max_model_len,
    }
    adapters = [
        {
            "id": e.spec.name,
            "object": "model",
            "created": e.created,
            "owned_by": "loragate",
            "root": e.adapter_id if e.source != "local" else e.spec.path,
            "parent": info.name,
            "max_model_len": None,
        }
        for e in pipeline.registry.entries()
    ]
    return {"object": "list", "data": [base, *adapters]}


class LoadLoRAAdapterRequest(msgspec.Struct, kw_only=True):
    """vLLM's ``POST /v1/load_lora_adapter`` body (``lora_path``: a local path under an adapter root,
    an ``s3://`` URI or a Hugging Face repo id)."""

    lora_name: str
    lora_path: str
    load_inplace: bool = False


class UnloadLoRAAdapterRequest(msgspec.Struct, kw_only=True):
    """vLLM's ``POST /v1/unload_lora_adapter`` body."""

    lora_name: str
    lora_int_id: int | None = None


@post("/load_lora_adapter", status_code=200, tags=["adapters"], summary="Load a LoRA adapter")
async def load_lora_adapter(data: LoadLoRAAdapterRequest, pipeline: Pipeline) -> Response[str]:
    """Load and validate an adapter under ``lora_name`` (vLLM-compatible; plain-text answer)."""
    await pipeline.registry.load_named(data.lora_name, data.lora_path)
    return Response(f"Success: LoRA adapter '{data.lora_name}' added successfully.", media_type="text/plain")


@post("/unload_lora_adapter", status_code=200, tags=["adapters"], summary="Unload a LoRA adapter")
async def unload_lora_adapter(data: UnloadLoRAAdapterRequest, pipeline: Pipeline) -> Response[str]:
    """Unload an adapter and free its engine memory (unlike vLLM's, which only forgets the name)."""
    await pipeline.registry.unregister(data.lora_name)
    return Response(f"Success: LoRA adapter '{data.lora_name}' removed successfully.", media_type="text/plain")


openai_router = Router(
    path="/v1",
    route_handlers=[create_chat_completion, create_completion, list_models, load_lora_adapter, unload_lora_adapter],
    exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
    before_request=require_json,
)
