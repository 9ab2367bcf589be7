"""The one generation pipeline both dialects use.

``GenerationRequest`` in, a :class:`GenerationStream` of neutral DELTA outputs (or one
:class:`~app.types.GenerationResult`) out. What is shared lives here once: adapter lookup,
context-length and ``max_tokens`` checks, starting the engine request before any byte is sent
(so that engine-side rejections still get a proper HTTP status), timing, and aborting the engine
request whenever a consumer stops early.
"""

from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator, Callable

import msgspec

from app.adapters import AdapterRegistry
from app.adapters.merge import MergeSpec
from app.engine.base import AdapterSpec, Engine
from app.errors import InvalidRequestError, OverloadedError
from app.types import (
    EngineOutput,
    FinishReason,
    GenerationRequest,
    GenerationResult,
    SequenceResult,
    TokenLogprob,
    Usage,
)


class RequestTimings:
    """Wall-clock marks of one request, in ``time.perf_counter()`` seconds: ``started`` when the
    pipeline got it, ``submitted`` when it was handed to the engine, ``first_token`` and
    ``last_token`` when outputs carrying tokens were handed to the dialect; ``queue_time``
    (seconds) from the engine when it reports one."""

    __slots__ = ("started", "submitted", "first_token", "last_token", "queue_time")

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.submitted: float | None = None
        self.first_token: float | None = None
        self.last_token: float | None = None
        self.queue_time: float | None = None


class GenerationStream:
    """A running engine request: an async iterator of :class:`EngineOutput` DELTA items.

    Closing it (``aclose()``) before the last item aborts the request in the engine, so nothing
    keeps generating for a client that is gone. Attributes: ``request``, ``adapter`` (``None``
    for the base model), ``num_prompt_tokens``, ``finished``, ``timings``."""

    def __init__(
        self,
        engine: Engine,
        request: GenerationRequest,
        adapter: AdapterSpec | None,
        outputs: AsyncIterator[EngineOutput],
        timings: RequestTimings,
        on_close: Callable[[AdapterSpec | None], None] | None = None,
    ) -> None:
        self._engine = engine
        self._on_close = on_close
        self.request = request
        self.adapter = adapter
        self._outputs = outputs
        self._first: EngineOutput | None = None
        self.finished = False
        self.closed = False
        self.timings = timings
        self.num_prompt_tokens = len(request.prompt.token_ids)

    async def _prime(self) -> None:
        """Start the engine request and wait for its first output (errors surface here)."""
        try:
            self._first = await self._outputs.__anext__()
        except BaseException:
            await self.aclose()
            raise
        self._mark(self._first)

    def _mark(self, out: EngineOutput) -> None:
        if out.finished:
            self.finished = True
            self.timings.queue_time = out.queue_time
        for d in out.deltas:
            if d.token_ids:
                now = time.perf_counter()
                if self.timings.first_token is None:
                    self.timings.first_token = now
                self.timings.last_token = now
                break

    def __aiter__(self) -> "GenerationStream":
        return self

    async def __anext__(self) -> EngineOutput:
        if self._first is not None:
            out, self._first = self._first, None
            return out
        if self.finished or self.closed:
            raise StopAsyncIteration
        try:
            out = await self._outputs.__anext__()
        except StopAsyncIteration:
            self.finished = True
            raise
        self._mark(out)
        return out

    async def aclose(self) -> None:
        """Stop consuming; abort the engine request if it has not finished. Idempotent."""
        if self.closed:
            return
        self.closed = True
        if self._on_close is not None:
            self._on_close(self.adapter)
        aclose = getattr(self._outputs, "aclose", None)
        if aclose is not None:
            try:
                await aclose()
            except Exception:
                pass
        if not self.finished:
            await self._engine.abort(self.request.request_id)


class Pipeline:
    """Runs :class:`GenerationRequest` objects on an engine, resolving adapters by name."""

    def __init__(
        self,
        engine: Engine,
        registry: AdapterRegistry,
        *,
        max_concurrent: int = 1024,
        max_n: int = 128,
        max_stop_sequences: int = 16,
        max_output_tokens: int | None = None,
    ) -> None:
        self.engine = engine
        self.registry = registry
        self.created = int(time.time())  # Unix seconds; the base model's `created` in /v1/models
        self.max_concurrent = max_concurrent
        self.max_n = max_n
        self.max_stop_sequences = max_stop_sequences
        self.max_output_tokens = max_output_tokens
        self.in_flight = 0  # engine requests started and not yet closed

    def _check(self, request: GenerationRequest, prompt_param: str) -> GenerationRequest:
        info = self.engine.info
        s = request.sampling
        prompt_len = len(request.prompt.token_ids)
        if prompt_len == 0:
            raise InvalidRequestError("The prompt is empty.", param=prompt_param)
        if s.n > self.max_n:
            raise InvalidRequestError(f"`n` is {s.n}; this server allows at most {self.max_n}.", param="n")
        if len(s.stop) > self.max_stop_sequences:
            raise InvalidRequestError(
                f"{len(s.stop)} stop sequences given; this server allows at most {self.max_stop_sequences}.",
                param="stop",
            )
        if prompt_len >= info.max_model_len:
            raise InvalidRequestError(
                f"This model's maximum context length is {info.max_model_len} tokens. However, your request has "
                f"{prompt_len} input tokens, which leaves no room for output. Please reduce the length of the input.",
                param=prompt_param,
            )
        limit = self.max_output_tokens
        if limit is not None and s.max_tokens is not None and s.max_tokens > limit:
            raise InvalidRequestError(
                f"`max_tokens` is {s.max_tokens}; this server generates at most {limit} tokens per request.",
                param="max_tokens",
            )
        if s.max_tokens is not None and s.max_tokens > info.max_model_len:
            raise InvalidRequestError(
                f"`max_tokens` is {s.max_tokens}, more than the model's context length of {info.max_model_len} tokens.",
                param="max_tokens",
            )
        for name, value in (("logprobs", s.logprobs), ("prompt_logprobs", s.prompt_logprobs)):
            if value is not None and value > info.max_logprobs:
                raise InvalidRequestError(
                    f"Requested {value} logprobs, more than the maximum of {info.max_logprobs}.", param=name
                )
        room = info.max_model_len - prompt_len
        if limit is not None:
            room = min(room, limit)
        max_tokens = room if s.max_tokens is None else min(s.max_tokens, room)
        if max_tokens != s.max_tokens:
            request = msgspec.structs.replace(request, sampling=msgspec.structs.replace(s, max_tokens=max_tokens))
        return request

    async def start(self, request: GenerationRequest, *, prompt_param: str = "prompt") -> GenerationStream:
        """Validate, resolve the adapter, start generating and wait for the first output.

        Raises the :mod:`app.errors` errors: ``InvalidRequestError`` (naming the parameter),
        ``ModelNotFoundError``, ``OverloadedError``, ``EngineError``/``EngineDeadError``."""
        timings = RequestTimings()
        request = self._check(request, prompt_param)
        if self.in_flight >= self.max_concurrent:
            raise OverloadedError("Model is overloaded")
        self.in_flight += 1
        try:
            adapter = await self._acquire_adapter(request)
        except BaseException:
            self.in_flight -= 1
            raise
        try:
            timings.submitted = time.perf_counter()
            outputs = self.engine.generate(request, adapter)
        except BaseException:
            self._closed(adapter)
            raise
        stream = GenerationStream(self.engine, request, adapter, outputs, timings, on_close=self._closed)
        await stream._prime()
        return stream

    def _closed(self, adapter: AdapterSpec | None) -> None:
        """A started request has ended (finished, failed or aborted)."""
        self.in_flight -= 1
        self.registry.release(adapter)

    async def _acquire_adapter(self, request: GenerationRequest) -> AdapterSpec | None:
        if request.merge is not None:
            m = request.merge
            spec = MergeSpec(
                weights=tuple(m.weights), strategy=m.strategy, density=m.density,
                majority_sign_method=m.majority_sign_method,
            )
            return await self.registry.acquire_merged(
                m.ids, spec, source=request.adapter_source, api_token=request.api_token
            )
        return await self.registry.acquire(request.adapter, source=request.adapter_source, api_token=request.api_token)

    async def start_many(
        self, requests: list[GenerationRequest], *, prompt_param: str = "prompt"
    ) -> list[GenerationStream]:
        """Start several requests (one per prompt); if any fails to start, abort the others."""
        tasks = [asyncio.ensure_future(self.start(r, prompt_param=prompt_param)) for r in requests]
        try:
            results = await asyncio.gather(*tasks, return_exceptions=True)
        except asyncio.CancelledError:  # the client left while prompts were starting
            for t in tasks:
                if t.done() and not t.cancelled() and t.exception() is None:
                    await t.result().aclose()
            raise
        streams = [r for r in results if isinstance(r, GenerationStream)]
        error = next((r for r in results if isinstance(r, BaseException)), None)
        if error is not None:
            await asyncio.gather(*(s.aclose() for s in streams))
            raise error
        return streams

    async def run(self, request: GenerationRequest, *, prompt_param: str = "prompt") -> GenerationResult:
        """Generate to the end and return every sequence, accumulated."""
        stream = await self.start(request, prompt_param=prompt_param)
        return await collect(stream)


async def collect(stream: GenerationStream) -> GenerationResult:
    """Drain a stream into a :class:`GenerationResult` (sequences in ``index`` order). The
    stream is closed (and the request aborted) if this is cancelled."""
    n = stream.request.sampling.n
    texts: list[list[str]] = [[] for _ in range(n)]
    token_ids: list[list[int]] = [[] for _ in range(n)]
    want_logprobs = stream.request.sampling.logprobs is not None
    logprobs: list[list[TokenLogprob]] = [[] for _ in range(n)]
    finish: list[FinishReason | None] = [None] * n
    stop_reason: list[str | int | None] = [None] * n
    prompt_logprobs = None
    try:
        async for out in stream:
            if out.prompt_logprobs is not None:
                prompt_logprobs = out.prompt_logprobs
            for d in out.deltas:
                texts[d.index].append(d.text)
                token_ids[d.index].extend(d.token_ids)
                if d.logprobs:
                    logprobs[d.index].extend(d.logprobs)
                if d.finish_reason is not None:
                    finish[d.index] = d.finish_reason
                    stop_reason[d.index] = d.stop_reason
    finally:
        await stream.aclose()
    sequences = [
        SequenceResult(
            index=i,
            text="".join(texts[i]),
            token_ids=token_ids[i],
            logprobs=logprobs[i] if want_logprobs else None,
            finish_reason=finish[i] or FinishReason.ABORT,
            stop_reason=stop_reason[i],
        )
        for i in range(n)
    ]
    usage = Usage(prompt_tokens=stream.num_prompt_tokens, completion_tokens=sum(len(t) for t in token_ids))
    return GenerationResult(
        request_id=stream.request.request_id,
        sequences=sequences,
        usage=usage,
        prompt_logprobs=prompt_logprobs,
        queue_time=stream.timings.queue_time,
    )


async def merge(streams: list[GenerationStream]) -> AsyncIterator[tuple[int, EngineOutput]]:
    """Interleave several streams as their outputs arrive, yielding ``(stream position, output)``.
    Closing the merged iterator closes (aborts) every stream that has not finished."""
    if len(streams) == 1:
        try:
            async for out in streams[0]:
                yield 0, out
        finally:
            await streams[0].aclose()
        return
    queue: asyncio.Queue[tuple[int, EngineOutput | None, BaseException | None]] = asyncio.Queue()

    async def pump(pos: int, stream: GenerationStream) -> None:
        try:
            async for out in stream:
                await queue.put((pos, out, None))
            await queue.put((pos, None, None))
        except Exception as exc:  # delivered to the consumer
            await queue.put((pos, None, exc))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(streams)
        while remaining:
            pos, out, exc = await queue.get()
            if exc is not None:
                raise exc
            if out is None:
                remaining -= 1
                continue
            yield pos, out
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(s.aclose() for s in streams))
