"""LoRAX parameters to neutral :mod:`app.types`, and finished results to LoRAX response bodies.

Response shapes: LoRAX ``router/src/lib.rs`` ``GenerateResponse``, ``Details``, ``BestOfSequence``,
``Token``, ``PrefillToken``, ``AlternativeToken`` at a7394ba3 (shared/reference/lorax-api.md §2.7),
with field order as LoRAX serialises it. Every generated token carries ``skipped`` and a non-null
``logprob`` so that both lorax-client 0.6.3 and HEAD parse it (§5.6).
"""

from __future__ import annotations

import random
from typing import Any

from app.engine.base import Engine
from app.types import FinishReason, GenerationResult, SamplingOptions, SequenceResult, StructuredOutput, TokenLogprob
from native_api.schema import GenerateParameters, NativeResponseFormat
from native_api.validation import uses_sampling

FINISH_REASONS: dict[FinishReason, str] = {
    FinishReason.EOS: "eos_token",
    FinishReason.STOP_SEQUENCE: "stop_sequence",
    FinishReason.LENGTH: "length",
    # Not LoRAX reasons; the client's enum only knows the three above, so they map to "length".
    FinishReason.ABORT: "length",
    FinishReason.ERROR: "length",
}

# LoRAX's default schema when `response_format` has no `schema` key (lib.rs ResponseFormat).
ARBITRARY_JSON_SCHEMA: dict[str, Any] = {
    "additionalProperties": {"type": ["object", "string", "integer", "number", "boolean", "null"]},
    "title": "ArbitraryJsonModel",
    "type": "object",
}


def structured_output(fmt: NativeResponseFormat | None) -> StructuredOutput | None:
    """The constraint a LoRAX ``response_format`` asks for.

    LoRAX ignores ``type`` and reads only ``schema`` (absent: its arbitrary-JSON schema; ``null``:
    no constraint). lorax-client always sends ``"schema": null`` when none is given, so under LoRAX a
    client asking for ``json_object`` got unconstrained text. Here, deliberately: ``text`` means no
    constraint, a schema object constrains to that schema, and ``json_object``/``json_schema``
    without a schema mean "any JSON object" — what such a client asked for."""
    if fmt is None or fmt.type.lower() == "text":
        return None
    if fmt.schema_ is not None:
        return StructuredOutput(json_schema=fmt.schema_)
    if not fmt.schema_given:
        return StructuredOutput(json_schema=ARBITRARY_JSON_SCHEMA)
    return StructuredOutput(json_object=True)


def sampling_options(p: GenerateParameters, *, stream: bool) -> tuple[SamplingOptions, int | None]:
    """LoRAX parameters to neutral options, plus the seed to report (``None`` when greedy).

    Greedy unless :func:`uses_sampling`; when sampling without a seed, one is drawn here and
    reported, as LoRAX does. Stop sequences stay in the output (LoRAX keeps them). Token logprobs
    are always computed, because every LoRAX token carries one."""
    n = p.best_of if (not stream and p.best_of and p.best_of > 1) else 1
    # best_of > 1 needs distinct samples (vLLM refuses n > 1 with greedy decoding).
    sampling = uses_sampling(p) or n > 1
    seed = p.seed
    if sampling and seed is None:
        seed = random.randrange(2**63)
    options = SamplingOptions(
        max_tokens=p.max_new_tokens,
        temperature=(p.temperature if p.temperature is not None else 1.0) if sampling else 0.0,
        top_p=p.top_p if sampling else None,
        top_k=p.top_k if sampling else None,
        n=n,
        seed=seed if sampling else None,
        stop=list(p.stop),
        include_stop_str_in_output=True,
        ignore_eos=p.ignore_eos_token,
        presence_penalty=p.presence_penalty,
        frequency_penalty=p.frequency_penalty,
        repetition_penalty=p.repetition_penalty,
        logprobs=p.return_k_alternatives or 0,
        prompt_logprobs=0 if p.decoder_input_details else None,
        structured=structured_output(p.response_format),
    )
    return options, (seed if sampling else None)


def token_body(engine: Engine, lp: TokenLogprob, *, alternatives: bool) -> dict[str, Any]:
    """A LoRAX ``Token``: id, text, logprob, special, [alternative_tokens], skipped."""
    body: dict[str, Any] = {
        "id": lp.token_id,
        "text": lp.text or engine.token_text(lp.token_id),
        "logprob": lp.logprob if lp.logprob is not None else 0.0,
        "special": engine.is_special(lp.token_id),
    }
    if alternatives:
        body["alternative_tokens"] = [{"id": t.token_id, "text": t.text, "logprob": t.logprob} for t in lp.top]
    body["skipped"] = False
    return body


def prefill_body(engine: Engine, entries: list[TokenLogprob] | None) -> list[dict[str, Any]]:
    """LoRAX ``prefill``: ``[{"id", "text", "logprob"}]``, the first token's logprob ``null``."""
    return [
        {"id": lp.token_id, "text": engine.token_text(lp.token_id), "logprob": lp.logprob} for lp in entries or []
    ]


def _tokens(engine: Engine, seq: SequenceResult, alternatives: bool) -> list[dict[str, Any]]:
    logprobs = seq.logprobs or [TokenLogprob(token_id=t, text="", logprob=None) for t in seq.token_ids]
    return [token_body(engine, lp, alternatives=alternatives) for lp in logprobs]


def mean_logprob(seq: SequenceResult) -> float:
    """Mean generated-token logprob: LoRAX picks the best of ``best_of`` sequences by it."""
    values = [lp.logprob for lp in seq.logprobs or [] if lp.logprob is not None]
    return sum(values) / len(values) if values else float("-inf")


def adapter_label(p: GenerateParameters) -> str | None:
    """What LoRAX reports as ``x-adapter-id``: the adapter id, the comma-joined ids of a merge, or
    ``None`` for the base model."""
    if p.adapter_id:
        return p.adapter_id
    return ",".join(p.merged_adapters.ids) if p.merged_adapters is not None else None


def rank_sequences(result: GenerationResult) -> list[SequenceResult]:
    """Sequences best first (by mean token logprob, as LoRAX picks the best of ``best_of``)."""
    return sorted(result.sequences, key=mean_logprob, reverse=True) if len(result.sequences) > 1 else result.sequences


def generate_response(
    engine: Engine,
    result: GenerationResult,
    ranked: list[SequenceResult],
    p: GenerateParameters,
    *,
    seed: int | None,
    prefix: str,
) -> dict[str, Any]:
    """A LoRAX ``GenerateResponse`` for sequences ``ranked`` best first. ``prefix`` is prepended to
    texts (``return_full_text``). ``details`` is present when ``details`` or
    ``decoder_input_details`` was asked for."""
    best = ranked[0]
    body: dict[str, Any] = {"generated_text": prefix + best.text}
    if not (p.details or p.decoder_input_details):
        return body
    alternatives = bool(p.return_k_alternatives)
    prefill = prefill_body(engine, result.prompt_logprobs)

    def seq_seed(seq: SequenceResult) -> int | None:
        return None if seed is None else seed + seq.index  # vLLM seeds child i with seed + i

    details: dict[str, Any] = {
        "finish_reason": FINISH_REASONS[best.finish_reason],
        "prompt_tokens": result.usage.prompt_tokens,
        "generated_tokens": len(best.token_ids),
        "skipped_tokens": 0,
        "seed": seq_seed(best),
        "prefill": prefill,
        "tokens": _tokens(engine, best, alternatives),
    }
    if len(ranked) > 1:
        details["best_of_sequences"] = [
            {
                "generated_text": prefix + seq.text,
                "finish_reason": FINISH_REASONS[seq.finish_reason],
                "generated_tokens": len(seq.token_ids),
                "seed": seq_seed(seq),
                "prefill": prefill,
                "tokens": _tokens(engine, seq, alternatives),
            }
            for seq in ranked[1:]
        ]
    body["details"] = details
    return body
