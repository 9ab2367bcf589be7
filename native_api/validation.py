"""LoRAX's request validation: the same rules, in the same order, with the same messages.

Source: LoRAX ``router/src/validation.rs`` (``Validation::validate``, ``validate_best_of``,
``validate_input``) and its ``ValidationError`` messages, at a7394ba3 (shared/reference/lorax-api.md
§2.4). Each rule raises :class:`LoraxValidationError`, rendered by the routes as
``{"error": "Input validation error: <message>", "error_type": "validation"}`` (422, or an SSE event on
a stream).
"""

from __future__ import annotations

import msgspec

from native_api.schema import GenerateParameters


class LoraxLimits(msgspec.Struct, frozen=True, kw_only=True):
    """The limits LoRAX's launcher passes to its router, as this server sets them:
    ``max_input_length`` and ``max_total_tokens`` in tokens (from the engine's context length)."""

    max_best_of: int = 2
    max_stop_sequences: int = 4
    max_input_length: int
    max_total_tokens: int
    max_concurrent_requests: int = 1024


class LoraxValidationError(Exception):
    """A LoRAX validation failure; ``message`` is the text after "Input validation error: "."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def uses_sampling(p: GenerateParameters) -> bool:
    """Whether LoRAX samples for these parameters (``server/lorax_server/utils/tokens.py``):
    ``do_sample``, or a temperature other than 0 and 1, or ``top_k`` > 0, ``top_p`` < 1,
    ``typical_p`` < 1. Temperature 0 is always greedy."""
    if p.temperature == 0:
        return False
    return bool(
        p.do_sample
        or (p.temperature is not None and p.temperature != 1.0)
        or (p.top_k is not None and p.top_k > 0)
        or (p.top_p is not None and p.top_p < 1.0)
        or (p.typical_p is not None and p.typical_p < 1.0)
    )


def validate_parameters(p: GenerateParameters, inputs: str, limits: LoraxLimits, *, stream: bool) -> None:
    """The checks that need no tokenizer, in LoRAX's order. Raises :class:`LoraxValidationError`."""
    if stream:
        # LoRAX's stream handler rejects these before validating anything else (server.rs).
        if p.best_of is not None and p.best_of != 1:
            raise LoraxValidationError("`best_of` != 1 is not supported when streaming tokens")
        if p.decoder_input_details:
            raise LoraxValidationError("`decoder_input_details` == true is not supported when streaming tokens")
    if p.merged_adapters is not None:
        if p.adapter_id:
            raise LoraxValidationError("at most one of `adapter_id` or `adapters` may be provided")
        if not p.merged_adapters.ids:
            raise LoraxValidationError("at least one adapter ID must be provided when setting `adapters`")
        if len(p.merged_adapters.ids) != len(p.merged_adapters.weights):
            raise LoraxValidationError("number of adapter IDs must match number of adapter weights")
    if p.best_of is not None and p.best_of > 1:
        if limits.max_best_of == 1:
            raise LoraxValidationError("`best_of` != 1 is not allowed for this endpoint")
        if p.best_of > limits.max_best_of:
            raise LoraxValidationError(f"`best_of` must be > 0 and <= {limits.max_best_of}. Given: {p.best_of}")
        if not (p.do_sample or p.temperature is not None or p.top_k is not None or p.top_p is not None
                or p.typical_p is not None):
            raise LoraxValidationError("you must use sampling when `best_of` is > 1")
    if p.temperature is not None and p.temperature < 0:
        raise LoraxValidationError("`temperature` must be non-negative")
    if p.repetition_penalty is not None and p.repetition_penalty <= 0:
        raise LoraxValidationError("`repetition_penalty` must be strictly positive")
    if p.frequency_penalty is not None and not -2.0 <= p.frequency_penalty <= 2.0:
        raise LoraxValidationError("`frequency_penalty` must be >= -2.0 and <= 2.0")
    if p.presence_penalty is not None and not -2.0 <= p.presence_penalty <= 2.0:
        raise LoraxValidationError("`presence_penalty` must be >= -2.0 and <= 2.0")
    # LoRAX accepts top_p == 1.0 (#676) although its message says "< 1.0".
    if p.top_p is not None and not 0.0 < p.top_p <= 1.0:
        raise LoraxValidationError("`top_p` must be > 0.0 and < 1.0")
    if p.typical_p is not None and not 0.0 < p.typical_p < 1.0:
        raise LoraxValidationError("`typical_p` must be > 0.0 and < 1.0")
    if p.top_k is not None and p.top_k <= 0:
        raise LoraxValidationError("`top_k` must be strictly positive")
    if p.return_k_alternatives is not None and p.return_k_alternatives <= 0:
        raise LoraxValidationError("`return_k_alternatives` must be strictly positive")
    if p.max_new_tokens == 0:
        raise LoraxValidationError("`max_new_tokens` must be strictly positive")
    if len(p.stop) > limits.max_stop_sequences:
        raise LoraxValidationError(
            f"`stop` supports up to {limits.max_stop_sequences} stop sequences. Given: {len(p.stop)}"
        )
    if p.seed is not None and p.best_of is not None and p.best_of > 1:
        raise LoraxValidationError("`seed` must not be set when `best_of` > 1")
    if not inputs:
        raise LoraxValidationError("`inputs` cannot be empty")
    if p.truncate is not None and (p.truncate == 0 or p.truncate > limits.max_input_length):
        raise LoraxValidationError(
            f"`truncate` must be strictly positive and less than {limits.max_input_length}. Given: {p.truncate}"
        )
    # Not in LoRAX (whose engine implements these): vLLM has no typical-p sampling and no
    # watermarking, and a parameter silently ignored would be a lie, so both are refused here.
    if p.typical_p is not None:
        raise LoraxValidationError("`typical_p` is not supported by this server (vLLM has no typical-p sampling)")
    if p.watermark:
        raise LoraxValidationError("`watermark` is not supported by this server")


def validate_length(p: GenerateParameters, input_tokens: int, limits: LoraxLimits) -> None:
    """LoRAX's length checks after tokenization (``validate_input``). Raises
    :class:`LoraxValidationError`."""
    if p.max_new_tokens is not None and input_tokens + p.max_new_tokens > limits.max_total_tokens:
        raise LoraxValidationError(
            f"`inputs` tokens + `max_new_tokens` must be <= {limits.max_total_tokens}. "
            f"Given: {input_tokens} `inputs` tokens and {p.max_new_tokens} `max_new_tokens`"
        )
    if input_tokens > limits.max_input_length:
        raise LoraxValidationError(
            f"`inputs` must have less than {limits.max_input_length} tokens. Given: {input_tokens}"
        )
