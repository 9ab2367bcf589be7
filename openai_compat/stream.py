"""OpenAI SSE streams: ``chat.completion.chunk`` and ``text_completion`` events, then ``data: [DONE]``.

Per token the hot path concatenates pre-encoded byte fragments around the ``msgspec``-encoded delta
text: no model object is built per chunk (DESIGN.md, "Hot path"). Framing: ``data: <json>\\n\\n``
(OpenAI API reference, "Streaming"; the ``openai`` SDK's SSE decoder).
"""

from __future__ import annotations

from typing import Any, AsyncGenerator

import msgspec

from app.engine.base import Engine
from app.errors import as_loragate_error
from app.pipeline import GenerationStream, merge
from app.tracking import RequestTracker
from app.types import CompletionDelta, FinishReason, TokenLogprob
from openai_compat.errors import stream_error_event
from openai_compat.mapping import FINISH_REASONS, chat_logprobs, completion_logprobs, usage_body

DONE = b"data: [DONE]\n\n"
_encode = msgspec.json.encode
_NULL = b"null"
_FINISH = {reason: (_encode(value) if value else _NULL) for reason, value in FINISH_REASONS.items()}


class _ChunkHead:
    """The bytes every chunk of one response starts with, rendered once per request."""

    def __init__(self, response_id: str, obj: str, created: int, model: str) -> None:
        self.head = (
            b'data: {"id":' + _encode(response_id) + b',"object":"' + obj.encode() + b'","created":'
            + str(created).encode() + b',"model":' + _encode(model)
        )
        self.choice = self.head + b',"choices":[{"index":'

    def usage(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        return self.head + b',"choices":[],"usage":' + _encode(usage_body(prompt_tokens, completion_tokens)) + b"}\n\n"


class ChatStreamEncoder(_ChunkHead):
    """Encodes chat deltas. Chunk shape (vLLM 0.32 / OpenAI):
    ``{"id","object":"chat.completion.chunk","created","model","choices":[{"index","delta","logprobs","finish_reason"}]}``."""

    def __init__(self, engine: Engine, response_id: str, created: int, model: str) -> None:
        super().__init__(response_id, "chat.completion.chunk", created, model)
        self._engine = engine

    def role(self, index: int, usage: bytes = b"") -> bytes:
        return (
            self.choice + str(index).encode()
            + b',"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]' + usage + b"}\n\n"
        )

    def delta(self, d: CompletionDelta, usage: bytes = b"") -> bytes:
        logprobs = _encode(chat_logprobs(self._engine, d.logprobs)) if d.logprobs is not None else _NULL
        return b"".join(
            (
                self.choice, str(d.index).encode(), b',"delta":{"content":', _encode(d.text), b'},"logprobs":',
                logprobs, b',"finish_reason":', _FINISH[d.finish_reason], b"}]", usage, b"}\n\n",
            )
        )


class CompletionStreamEncoder(_ChunkHead):
    """Encodes legacy completion deltas: ``{"id","object":"text_completion","created","model",
    "choices":[{"index","text","logprobs","finish_reason"}]}``."""

    def __init__(self, engine: Engine, response_id: str, created: int, model: str) -> None:
        super().__init__(response_id, "text_completion", created, model)
        self._engine = engine

    def delta(self, index: int, text: str, logprobs: list[TokenLogprob] | None, text_offset: int,
              finish: Any, usage: bytes = b"") -> bytes:
        lp = _encode(completion_logprobs(self._engine, logprobs, text_offset)) if logprobs is not None else _NULL
        return b"".join(
            (
                self.choice, str(index).encode(), b',"text":', _encode(text), b',"logprobs":', lp,
                b',"finish_reason":', _FINISH[finish], b"}]", usage, b"}\n\n",
            )
        )


def _usage_field(prompt_tokens: int, completion_tokens: int) -> bytes:
    return b',"usage":' + _encode(usage_body(prompt_tokens, completion_tokens))


async def chat_events(
    stream: GenerationStream,
    enc: ChatStreamEncoder,
    *,
    include_usage: bool,
    continuous_usage: bool,
    tracker: RequestTracker,
) -> AsyncGenerator[bytes, None]:
    """The chat SSE stream: one role chunk per choice, content deltas (choices interleaved by
    ``index``, the last delta of each carrying its ``finish_reason``), the usage chunk when asked,
    then ``[DONE]``. An error after the start is sent as an error event followed by ``[DONE]``."""
    prompt_tokens = stream.num_prompt_tokens
    generated = unsent = 0
    finish = None
    continuous = include_usage and continuous_usage
    try:
        yield b"".join(
            enc.role(i, _usage_field(prompt_tokens, 0) if continuous else b"") for i in range(stream.request.sampling.n)
        )
        async for out in stream:
            # Everything one engine output brings is ready at once: one write, not one per event.
            parts = []
            for d in out.deltas:
                generated += len(d.token_ids)
                unsent += len(d.token_ids)
                finish = finish or d.finish_reason
                if not d.text and d.finish_reason is None and not d.logprobs:
                    continue  # nothing a client can see yet (text held back for stop strings)
                parts.append(enc.delta(d, _usage_field(prompt_tokens, generated) if continuous else b""))
            if parts and unsent:
                tracker.tokens(unsent)
                unsent = 0
            if out.finished:
                if include_usage:
                    parts.append(enc.usage(prompt_tokens, generated))
                parts.append(DONE)
            if parts:
                yield b"".join(parts)
        tracker.finish(_reason(finish), prompt_tokens=prompt_tokens, generated_tokens=generated,
                       queue_time=stream.timings.queue_time)
    except Exception as exc:  # the response has started: report in-band, never cut the stream silently
        error = as_loragate_error(exc)
        tracker.error(error.kind)
        yield stream_error_event(error)
        yield DONE
    finally:
        tracker.disconnected()
        await stream.aclose()


def _reason(finish: FinishReason | None) -> str:
    return finish.value if finish is not None else "abort"


async def completion_events(
    streams: list[GenerationStream],
    enc: CompletionStreamEncoder,
    *,
    echo_texts: list[str] | None,
    include_usage: bool,
    continuous_usage: bool,
    tracker: RequestTracker,
) -> AsyncGenerator[bytes, None]:
    """The legacy completion SSE stream over one stream per prompt, interleaved as tokens arrive
    (choice ``index`` = prompt position * n + sequence index), then usage and ``[DONE]``."""
    n = streams[0].request.sampling.n if streams else 1
    prompt_tokens = sum(s.num_prompt_tokens for s in streams)
    generated = 0
    offsets = [0] * (n * len(streams))
    started = [False] * (n * len(streams))
    prompt_lps: dict[int, list[TokenLogprob]] = {}
    continuous = include_usage and continuous_usage
    unsent = 0
    finish = None
    remaining = len(streams)
    try:
        async for pos, out in merge(streams):
            if out.prompt_logprobs is not None:
                prompt_lps[pos] = out.prompt_logprobs
            parts = []
            for d in out.deltas:
                generated += len(d.token_ids)
                unsent += len(d.token_ids)
                finish = finish or d.finish_reason
                index = pos * n + d.index
                text, logprobs = d.text, d.logprobs
                if not started[index]:
                    started[index] = True
                    if echo_texts is not None:
                        text = echo_texts[pos] + text
                        if logprobs is not None and pos in prompt_lps:
                            logprobs = prompt_lps[pos] + logprobs
                if not text and d.finish_reason is None and not logprobs:
                    continue
                parts.append(enc.delta(
                    index, text, logprobs, offsets[index], d.finish_reason,
                    _usage_field(prompt_tokens, generated) if continuous else b"",
                ))
                offsets[index] += len(text)
            if parts and unsent:
                tracker.tokens(unsent)
                unsent = 0
            remaining -= out.finished
            if not remaining:
                if include_usage:
                    parts.append(enc.usage(prompt_tokens, generated))
                parts.append(DONE)
            if parts:
                yield b"".join(parts)
        queue = [s.timings.queue_time for s in streams if s.timings.queue_time is not None]
        tracker.finish(_reason(finish), prompt_tokens=prompt_tokens, generated_tokens=generated,
                       queue_time=max(queue) if queue else None)
    except Exception as exc:  # the response has started: report in-band, never cut the stream silently
        error = as_loragate_error(exc)
        tracker.error(error.kind)
        yield stream_error_event(error)
        yield DONE
    finally:
        tracker.disconnected()
        for s in streams:
            await s.aclose()
