"""Neutral generation types shared by both dialects and every engine.

A dialect turns its HTTP body into a :class:`GenerationRequest`; the pipeline hands it to an
:class:`~app.engine.base.Engine`, which yields :class:`EngineOutput` deltas; the dialect encodes those
into its own wire format. Nothing here knows about HTTP, OpenAI or LoRAX.

These are ``msgspec.Struct`` classes: building one costs about 0.1 µs, so the per-token path can
afford them (DESIGN.md, "Hot path").
"""

from __future__ import annotations

import enum
from typing import Any

import msgspec


class StructuredOutput(msgspec.Struct, frozen=True, kw_only=True):
    """A constraint on the generated text (vLLM structured outputs).

    Exactly one of the fields is set. ``json_schema`` is a JSON Schema object; ``json_object``
    means "any JSON object"; ``regex`` and ``choice`` are passed through to the engine.
    """

    json_schema: dict[str, Any] | None = None
    json_object: bool = False
    regex: str | None = None
    choice: list[str] | None = None


class SamplingOptions(msgspec.Struct, kw_only=True):
    """Sampling and stopping parameters of one request.

    ``None`` means "the model's default" (from its ``generation_config.json``), else the engine's
    default (temperature 1.0, top_p 1.0, no top_k, no penalties).

    ``max_tokens`` is the number of generated tokens at most; ``None`` means up to the context
    limit (``max_model_len - prompt tokens``). ``logprobs`` is the number of alternatives returned
    per generated token besides the sampled one (0 means the sampled token's logprob only; ``None``
    means no logprobs). ``prompt_logprobs`` likewise for prompt tokens.
    """

    max_tokens: int | None = None
    min_tokens: int = 0
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    typical_p: float | None = None
    n: int = 1
    seed: int | None = None
    stop: list[str] = msgspec.field(default_factory=list)
    stop_token_ids: list[int] = msgspec.field(default_factory=list)
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    logit_bias: dict[int, float] | None = None
    skip_special_tokens: bool = True
    structured: StructuredOutput | None = None


class ChatMessage(msgspec.Struct, kw_only=True):
    """One chat message, already reduced to text: ``role`` ("system", "user", "assistant", ...)
    and ``content``. Source of the shape: OpenAI chat ``messages``."""

    role: str
    content: str
    name: str | None = None


class Prompt(msgspec.Struct, kw_only=True):
    """A rendered prompt: its token ids, its text when known, and the engine's own opaque input
    object (e.g. vLLM's ``EngineInput``) so the engine does not render it twice."""

    token_ids: list[int]
    text: str | None = None
    engine_input: Any = None


class AdapterMerge(msgspec.Struct, frozen=True, kw_only=True):
    """Adapters to merge into one (LoRAX ``merged_adapters``): ``ids`` with one weight each,
    ``strategy`` (linear, ties, dare_linear, dare_ties), ``density`` and ``majority_sign_method``
    for the ties/dare strategies."""

    ids: list[str]
    weights: list[float]
    strategy: str = "linear"
    density: float = 0.0
    majority_sign_method: str = "total"


class GenerationRequest(msgspec.Struct, kw_only=True):
    """One request to generate from one prompt.

    ``adapter`` names an adapter (``None`` for the base model): a loaded name, or an adapter id to
    load from ``adapter_source`` (``None``: the server's default source). ``api_token`` is the
    client's token for that source (never logged). ``merge`` asks for a merge of several adapters
    instead. ``request_id`` is unique per server and is what the engine aborts on disconnect.
    """

    request_id: str
    prompt: Prompt
    sampling: SamplingOptions
    adapter: str | None = None
    adapter_source: str | None = None
    api_token: str | None = msgspec.field(default=None)
    merge: AdapterMerge | None = None
    priority: int = 0

    def __repr__(self) -> str:  # keep api_token out of logs and tracebacks
        return f"GenerationRequest(request_id={self.request_id!r}, adapter={self.adapter!r})"


class FinishReason(str, enum.Enum):
    """Why a sequence ended, in engine-neutral terms. Dialects map these to their own words
    (OpenAI ``stop``/``length``; LoRAX ``eos_token``/``stop_sequence``/``length``)."""

    EOS = "eos"  # the end-of-sequence token
    STOP_SEQUENCE = "stop_sequence"  # a stop string or a stop token id
    LENGTH = "length"  # max_tokens or the context limit
    ABORT = "abort"  # cancelled (client gone, server shutting down)
    ERROR = "error"  # the engine failed this sequence


class TopLogprob(msgspec.Struct, array_like=True, frozen=True):
    """One candidate token: id, decoded text and natural-log probability."""

    token_id: int
    text: str
    logprob: float


class TokenLogprob(msgspec.Struct, kw_only=True):
    """The logprob of one token (sampled or prompt) plus its top alternatives, best first.

    ``logprob`` is ``None`` where the engine has none (the first prompt token)."""

    token_id: int
    text: str
    logprob: float | None
    top: list[TopLogprob] = msgspec.field(default_factory=list)


class CompletionDelta(msgspec.Struct, kw_only=True):
    """What one sequence (choice ``index``) produced since the previous output.

    ``text`` may be empty while ``token_ids`` is not (text held back to match stop strings).
    ``finish_reason`` is set on the sequence's last delta; ``stop_reason`` is then the matched
    stop string or stop token id, if any."""

    index: int
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None = None
    finish_reason: FinishReason | None = None
    stop_reason: str | int | None = None


class EngineOutput(msgspec.Struct, kw_only=True):
    """One item of an engine's output stream for one request (a DELTA, not cumulative).

    ``finished`` is true on the last item, once every sequence has finished.
    ``num_prompt_tokens`` is the prompt length in tokens; ``prompt_logprobs`` appears at most once.
    ``queue_time`` is the engine's measure, in seconds, of how long the request waited before it
    was scheduled (set on the last item when the engine reports it)."""

    deltas: list[CompletionDelta]
    finished: bool
    num_prompt_tokens: int
    num_cached_tokens: int = 0
    prompt_logprobs: list[TokenLogprob] | None = None
    queue_time: float | None = None


class Usage(msgspec.Struct, kw_only=True):
    """Token counts of a request: prompt tokens, generated tokens (summed over sequences)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class SequenceResult(msgspec.Struct, kw_only=True):
    """A finished sequence, accumulated from its deltas (non-streaming requests)."""

    index: int
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None
    finish_reason: FinishReason
    stop_reason: str | int | None = None


class GenerationResult(msgspec.Struct, kw_only=True):
    """A finished request: its sequences in ``index`` order, usage and prompt logprobs."""

    request_id: str
    sequences: list[SequenceResult]
    usage: Usage
    prompt_logprobs: list[TokenLogprob] | None = None
    queue_time: float | None = None
