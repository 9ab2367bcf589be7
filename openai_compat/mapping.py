"""OpenAI requests to neutral :mod:`app.types`, and finished results to OpenAI response bodies.

Response shapes follow the OpenAI API reference ("The chat completion object", "The completion
object") as vLLM 0.32 serves them (shared/reference/vllm-engine.md §4).
"""

from __future__ import annotations

from typing import Any

from app.engine.base import Engine
from app.errors import InvalidRequestError
from app.types import (
    ChatMessage,
    FinishReason,
    GenerationResult,
    SamplingOptions,
    StructuredOutput,
    TokenLogprob,
)
from openai_compat.schema import ChatCompletionRequest, CompletionRequest, ResponseFormat, _SamplingFields

SYSTEM_FINGERPRINT = "loragate-0.1.0"

FINISH_REASONS: dict[FinishReason | None, str | None] = {
    None: None,
    FinishReason.EOS: "stop",
    FinishReason.STOP_SEQUENCE: "stop",
    FinishReason.LENGTH: "length",
    FinishReason.ABORT: "abort",
    FinishReason.ERROR: "error",
}


def chat_messages(request: ChatCompletionRequest) -> list[ChatMessage]:
    """OpenAI messages to neutral text messages. Text parts are joined with newlines.
    Raises :class:`InvalidRequestError` for non-text parts (the models served take text only)."""
    out = []
    for i, m in enumerate(request.messages):
        if isinstance(m.content, list):
            texts = []
            for j, part in enumerate(m.content):
                if part.type != "text":
                    raise InvalidRequestError(
                        f"Content parts of type `{part.type}` are not supported by this model; send text.",
                        param=f"messages[{i}].content[{j}].type",
                    )
                texts.append(part.text)  # type: ignore[union-attr]
            content = "\n".join(texts)
        else:
            content = m.content or ""
        out.append(ChatMessage(role=m.role, content=content, name=m.name))
    return out


def _structured(fmt: ResponseFormat | None) -> StructuredOutput | None:
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return StructuredOutput(json_object=True)
    assert fmt.json_schema is not None and fmt.json_schema.schema_ is not None
    return StructuredOutput(json_schema=fmt.json_schema.schema_)


def _sampling(req: _SamplingFields, *, max_tokens: int | None, logprobs: int | None, prompt_logprobs: int | None,
              fmt: ResponseFormat | None) -> SamplingOptions:
    return SamplingOptions(
        max_tokens=max_tokens,
        min_tokens=req.min_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=req.top_k,
        min_p=req.min_p,
        n=req.n,
        seed=req.seed,
        stop=req.stop_list(),
        stop_token_ids=list(req.stop_token_ids or []),
        include_stop_str_in_output=req.include_stop_str_in_output,
        ignore_eos=req.ignore_eos,
        presence_penalty=req.presence_penalty,
        frequency_penalty=req.frequency_penalty,
        repetition_penalty=req.repetition_penalty,
        logprobs=logprobs,
        prompt_logprobs=prompt_logprobs,
        logit_bias={int(k): v for k, v in req.logit_bias.items()} if req.logit_bias else None,
        skip_special_tokens=req.skip_special_tokens,
        structured=_structured(fmt),
    )


def chat_sampling(req: ChatCompletionRequest) -> SamplingOptions:
    """Sampling options of a chat request. ``max_completion_tokens`` wins over the deprecated
    ``max_tokens``; ``logprobs=true`` alone returns the sampled token's logprob only."""
    if req.tools and req.tool_choice != "none":
        raise InvalidRequestError("Tool calling is not supported by this server.", param="tools")
    return _sampling(
        req,
        max_tokens=req.max_completion_tokens or req.max_tokens,
        logprobs=(req.top_logprobs or 0) if req.logprobs else None,
        prompt_logprobs=None,
        fmt=req.response_format,
    )


def completion_sampling(req: CompletionRequest) -> SamplingOptions:
    """Sampling options of a legacy completion request. With ``echo`` and ``logprobs`` the prompt's
    logprobs are returned too."""
    if req.suffix:
        raise InvalidRequestError("`suffix` is not supported by this model.", param="suffix")
    if req.best_of is not None and req.best_of != req.n:
        raise InvalidRequestError("`best_of` different from `n` is not supported.", param="best_of")
    return _sampling(
        req,
        max_tokens=req.max_tokens,
        logprobs=req.logprobs,
        prompt_logprobs=req.logprobs if (req.echo and req.logprobs is not None) else None,
        fmt=req.response_format,
    )


def completion_prompts(req: CompletionRequest) -> list[str | list[int]]:
    """The prompts of a completion request: strings, or token-id lists."""
    p = req.prompt
    if isinstance(p, str):
        return [p]
    if all(isinstance(x, int) for x in p):
        return [list(p)]  # type: ignore[arg-type]
    return list(p)  # type: ignore[arg-type]


# -- logprobs ------------------------------------------------------------------------------


def _token_text(engine: Engine, lp: TokenLogprob) -> str:
    return lp.text or engine.token_text(lp.token_id)


def chat_logprobs(engine: Engine, entries: list[TokenLogprob]) -> dict[str, Any]:
    """Chat ``logprobs`` object: ``{"content": [{token, logprob, bytes, top_logprobs}]}``."""
    content = []
    for lp in entries:
        token = _token_text(engine, lp)
        content.append(
            {
                "token": token,
                "logprob": lp.logprob,
                "bytes": list(token.encode("utf-8", "replace")),
                "top_logprobs": [
                    {"token": t.text, "logprob": t.logprob, "bytes": list(t.text.encode("utf-8", "replace"))}
                    for t in lp.top
                ],
            }
        )
    return {"content": content}


def completion_logprobs(engine: Engine, entries: list[TokenLogprob], text_offset: int) -> dict[str, Any]:
    """Legacy completion ``logprobs``: parallel lists ``tokens``, ``token_logprobs``,
    ``top_logprobs`` (token -> logprob; ``None`` for the first prompt token) and ``text_offset``
    (character offsets, starting at ``text_offset``)."""
    tokens, token_logprobs, top, offsets = [], [], [], []
    offset = text_offset
    for lp in entries:
        token = _token_text(engine, lp)
        tokens.append(token)
        token_logprobs.append(lp.logprob)
        top.append({t.text: t.logprob for t in lp.top} if lp.logprob is not None else None)
        offsets.append(offset)
        if not engine.is_special(lp.token_id):  # special tokens are not part of the returned text
            offset += len(token)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top, "text_offset": offsets}


# -- non-streaming responses -----------------------------------------------------------------


def usage_body(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_response(engine: Engine, result: GenerationResult, *, response_id: str, created: int, model: str) -> dict[str, Any]:
    """The ``chat.completion`` object for a finished chat request."""
    choices = [
        {
            "index": seq.index,
            "message": {"role": "assistant", "content": seq.text},
            "logprobs": chat_logprobs(engine, seq.logprobs) if seq.logprobs is not None else None,
            "finish_reason": FINISH_REASONS[seq.finish_reason],
        }
        for seq in result.sequences
    ]
    return {
        "id": response_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage_body(result.usage.prompt_tokens, result.usage.completion_tokens),
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }


def completion_response(
    engine: Engine,
    results: list[GenerationResult],
    *,
    echo_texts: list[str] | None,
    response_id: str,
    created: int,
    model: str,
) -> dict[str, Any]:
    """The ``text_completion`` object for finished prompts; choice ``index`` is
    ``prompt position * n + sequence index``, as OpenAI and vLLM number them."""
    choices = []
    prompt_tokens = completion_tokens = 0
    for p, result in enumerate(results):
        prompt_tokens += result.usage.prompt_tokens
        completion_tokens += result.usage.completion_tokens
        echo = echo_texts[p] if echo_texts is not None else ""
        for seq in result.sequences:
            logprobs = None
            if seq.logprobs is not None:
                entries = (result.prompt_logprobs or []) + seq.logprobs if echo_texts is not None else seq.logprobs
                logprobs = completion_logprobs(engine, entries, 0)
            choices.append(
                {
                    "index": p * len(result.sequences) + seq.index,
                    "text": echo + seq.text,
                    "logprobs": logprobs,
                    "finish_reason": FINISH_REASONS[seq.finish_reason],
                }
            )
    return {
        "id": response_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage_body(prompt_tokens, completion_tokens),
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }
