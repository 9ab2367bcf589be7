"""LoRAX native SSE: one ``StreamResponse`` event per generated token, no end marker.

Framing as axum writes it (LoRAX ``router/src/server.rs`` ``generate_stream``, lib.rs
``StreamResponse``): ``data:<compact JSON>\\n\\n`` — no space after ``data:``, no ``event:``/``id:``
lines, never ``[DONE]`` (lorax-client would ``json.loads`` it and crash). Every event has ``token``;
the last one also has ``generated_text`` and, when asked, ``details``. An error after the start is
one ``data:{"error": ..., "error_type": ...}`` event, then the stream ends.
"""

from __future__ import annotations

from typing import AsyncGenerator

import msgspec

from app.engine.base import Engine
from app.errors import as_loragate_error
from app.pipeline import GenerationStream
from app.tracking import RequestTracker
from app.types import FinishReason, TokenLogprob
from native_api.errors import error_payload, stream_error_event
from native_api.mapping import FINISH_REASONS

_encode = msgspec.json.encode
_INTERMEDIATE_TAIL = b',"generated_text":null,"details":null}\n\n'
_TRUE, _FALSE = b"true", b"false"


class NativeStreamEncoder:
    """Renders ``StreamResponse`` events from pre-built byte fragments (no model per token)."""

    def __init__(self, engine: Engine, *, alternatives: bool) -> None:
        self._engine = engine
        self._alternatives = alternatives

    def token(self, token_id: int, lp: TokenLogprob | None) -> bytes:
        engine = self._engine
        text = (lp.text if lp is not None and lp.text else "") or engine.token_text(token_id)
        logprob = lp.logprob if lp is not None and lp.logprob is not None else 0.0
        parts = [
            b'{"id":', str(token_id).encode(), b',"text":', _encode(text), b',"logprob":', _encode(logprob),
            b',"special":', _TRUE if engine.is_special(token_id) else _FALSE,
        ]
        if self._alternatives:
            alts = [{"id": t.token_id, "text": t.text, "logprob": t.logprob} for t in (lp.top if lp else [])]
            parts += [b',"alternative_tokens":', _encode(alts)]
        parts.append(b',"skipped":false}')
        return b"".join(parts)

    @staticmethod
    def intermediate(token: bytes) -> bytes:
        return b'data:{"token":' + token + _INTERMEDIATE_TAIL

    @staticmethod
    def final(token: bytes, generated_text: str, details: dict | None) -> bytes:
        return (
            b'data:{"token":' + token + b',"generated_text":' + _encode(generated_text)
            + b',"details":' + _encode(details) + b"}\n\n"
        )


async def native_events(
    stream: GenerationStream,
    enc: NativeStreamEncoder,
    *,
    prefix: str,
    details: bool,
    seed: int | None,
    tracker: RequestTracker,
) -> AsyncGenerator[bytes, None]:
    """The LoRAX token stream of one request (``n`` is 1 on streams)."""
    texts = [prefix]
    generated = 0
    finished: FinishReason | None = None
    try:
        async for out in stream:
            events = []  # all the tokens of one engine output are ready at once: one write
            for d in out.deltas:
                texts.append(d.text)
                last = len(d.token_ids) - 1
                for i, token_id in enumerate(d.token_ids):
                    generated += 1
                    lp = d.logprobs[i] if d.logprobs is not None and i < len(d.logprobs) else None
                    token = enc.token(token_id, lp)
                    if i == last and d.finish_reason is not None:
                        finished = d.finish_reason
                        body = None
                        if details:
                            body = {
                                "finish_reason": FINISH_REASONS[d.finish_reason],
                                "prompt_tokens": stream.num_prompt_tokens,
                                "generated_tokens": generated,
                                "seed": seed,
                            }
                        events.append(enc.final(token, "".join(texts), body))
                    else:
                        events.append(enc.intermediate(token))
            if events:
                tracker.tokens(len(events))
                yield b"".join(events)
            if finished:
                tracker.finish(finished.value, prompt_tokens=stream.num_prompt_tokens,
                               generated_tokens=generated, queue_time=stream.timings.queue_time)
        if not finished:
            tracker.error("incomplete_generation")
            yield b"data:" + _encode(error_payload("Incomplete generation", "incomplete_generation")) + b"\n\n"
    except Exception as exc:  # the response has started: report in-band, never cut the stream silently
        error = as_loragate_error(exc)
        tracker.error(error.kind)
        yield stream_error_event(error)
    finally:
        tracker.disconnected()
        await stream.aclose()
