"""Property tests (hypothesis) for the pure code both dialects rely on: LoRAX validation and its
order of checks, the OpenAI request mapping, logprob offsets, config parsing, running statistics and
log redaction.

The LoRAX oracle below is written from shared/reference/lorax-api.md §2.2-2.4 (LoRAX
``router/src/validation.rs``: the order of ``Validation::validate``, the messages of
``ValidationError``), not from :mod:`native_api.validation`. Examples are bounded (``max_examples``
per test) and derandomized, so a run is reproducible and takes a few seconds.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, example, given, reject, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from app.engine.synthetic import EOS_ID, SyntheticEngine
from app.errors import InvalidRequestError
from app.types import StructuredOutput, TokenLogprob, TopLogprob
from native_api.mapping import sampling_options
from native_api.schema import GenerateParameters
from native_api.validation import (
    LoraxLimits,
    LoraxValidationError,
    uses_sampling,
    validate_length,
    validate_parameters,
)
from openai_compat.mapping import chat_sampling, completion_logprobs, completion_sampling
from openai_compat.schema import ChatCompletionRequest, CompletionRequest

PROPERTY = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
FEW = settings(PROPERTY, max_examples=60)

MAX_MODEL_LEN = 512

# -- LoRAX validation ---------------------------------------------------------------------------


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), strategy)


def around(*points: float, low: float = -5.0, high: float = 5.0) -> st.SearchStrategy[float]:
    """Floats with a bias for the boundaries that matter."""
    return st.one_of(st.sampled_from(points), st.floats(low, high, allow_nan=False))


generate_parameters = st.builds(
    dict,
    adapter_id=maybe(st.sampled_from(["", "lora-a"])),
    merged_adapters=maybe(st.fixed_dictionaries({
        "ids": st.lists(st.sampled_from(["a", "b"]), max_size=2),
        "weights": st.lists(st.floats(0, 1), max_size=2),
    })),
    best_of=maybe(st.integers(0, 4)),
    temperature=maybe(around(-1.0, -0.0, 0.0, 0.5, 1.0, 2.5)),
    repetition_penalty=maybe(around(-1.0, 0.0, 0.5, 1.0, 2.0)),
    frequency_penalty=maybe(around(-2.5, -2.0, 0.0, 2.0, 2.5)),
    presence_penalty=maybe(around(-2.5, -2.0, 0.0, 2.0, 2.5)),
    top_p=maybe(around(-0.1, 0.0, 0.5, 1.0, 1.1, low=-1.0, high=2.0)),
    typical_p=maybe(around(0.0, 0.5, 1.0, 1.5, low=-1.0, high=2.0)),
    top_k=maybe(st.integers(-2, 60)),
    do_sample=st.booleans(),
    return_k_alternatives=maybe(st.integers(-2, 5)),
    max_new_tokens=maybe(st.sampled_from([0, 1, 10, 511, 512, 600])),
    stop=st.lists(st.text(max_size=3), max_size=6),
    seed=maybe(st.integers(0, 2**64 - 1)),
    truncate=maybe(st.sampled_from([0, 1, 100, 511, 512])),
    watermark=st.booleans(),
    decoder_input_details=st.booleans(),
).map(lambda d: {k: v for k, v in d.items() if v is not None})

lorax_limits = st.builds(
    LoraxLimits,
    max_best_of=st.integers(1, 3),
    max_stop_sequences=st.integers(0, 4),
    max_input_length=st.just(MAX_MODEL_LEN - 1),
    max_total_tokens=st.just(MAX_MODEL_LEN),
)


def lorax_expected(p: GenerateParameters, inputs: str, lim: LoraxLimits, stream: bool) -> str | None:
    """The first LoRAX validation error for these parameters (``None``: valid), in LoRAX's order:
    the stream handler's own checks, then adapters, best_of, temperature, repetition_penalty,
    frequency_penalty, presence_penalty, top_p, typical_p, top_k, return_k_alternatives,
    max_new_tokens, stop, seed with best_of, empty inputs, truncate; last, what this server refuses
    (typical_p, watermark: vLLM implements neither)."""
    m = p.merged_adapters
    sampling_set = (p.do_sample or p.temperature is not None or p.top_k is not None or p.top_p is not None
                    or p.typical_p is not None)
    rules: list[tuple[Callable[[], bool], str]] = [
        (lambda: stream and p.best_of is not None and p.best_of != 1,
         "`best_of` != 1 is not supported when streaming tokens"),
        (lambda: stream and p.decoder_input_details,
         "`decoder_input_details` == true is not supported when streaming tokens"),
        (lambda: m is not None and bool(p.adapter_id), "at most one of `adapter_id` or `adapters` may be provided"),
        (lambda: m is not None and not m.ids, "at least one adapter ID must be provided when setting `adapters`"),
        (lambda: m is not None and len(m.ids) != len(m.weights),
         "number of adapter IDs must match number of adapter weights"),
        (lambda: (p.best_of or 0) > 1 and lim.max_best_of == 1, "`best_of` != 1 is not allowed for this endpoint"),
        (lambda: (p.best_of or 0) > 1 and p.best_of > lim.max_best_of,
         f"`best_of` must be > 0 and <= {lim.max_best_of}. Given: {p.best_of}"),
        (lambda: (p.best_of or 0) > 1 and not sampling_set, "you must use sampling when `best_of` is > 1"),
        (lambda: p.temperature is not None and p.temperature < 0, "`temperature` must be non-negative"),
        (lambda: p.repetition_penalty is not None and p.repetition_penalty <= 0,
         "`repetition_penalty` must be strictly positive"),
        (lambda: p.frequency_penalty is not None and not -2 <= p.frequency_penalty <= 2,
         "`frequency_penalty` must be >= -2.0 and <= 2.0"),
        (lambda: p.presence_penalty is not None and not -2 <= p.presence_penalty <= 2,
         "`presence_penalty` must be >= -2.0 and <= 2.0"),
        (lambda: p.top_p is not None and not 0 < p.top_p <= 1, "`top_p` must be > 0.0 and < 1.0"),
        (lambda: p.typical_p is not None and not 0 < p.typical_p < 1, "`typical_p` must be > 0.0 and < 1.0"),
        (lambda: p.top_k is not None and p.top_k <= 0, "`top_k` must be strictly positive"),
        (lambda: p.return_k_alternatives is not None and p.return_k_alternatives <= 0,
         "`return_k_alternatives` must be strictly positive"),
        (lambda: p.max_new_tokens == 0, "`max_new_tokens` must be strictly positive"),
        (lambda: len(p.stop) > lim.max_stop_sequences,
         f"`stop` supports up to {lim.max_stop_sequences} stop sequences. Given: {len(p.stop)}"),
        (lambda: p.seed is not None and (p.best_of or 0) > 1, "`seed` must not be set when `best_of` > 1"),
        (lambda: not inputs, "`inputs` cannot be empty"),
        (lambda: p.truncate is not None and (p.truncate == 0 or p.truncate > lim.max_input_length),
         f"`truncate` must be strictly positive and less than {lim.max_input_length}. Given: {p.truncate}"),
        (lambda: p.typical_p is not None,
         "`typical_p` is not supported by this server (vLLM has no typical-p sampling)"),
        (lambda: p.watermark, "`watermark` is not supported by this server"),
    ]
    return next((message for broken, message in rules if broken()), None)


# LoRAX's ValidationError messages (lorax-api.md §2.4) and this server's two additions.
DOCUMENTED = [re.compile(p) for p in (
    r"`best_of` must be > 0 and <= \d+\. Given: \d+",
    r"`best_of` != 1 is not allowed for this endpoint",
    r"you must use sampling when `best_of` is > 1",
    r"`seed` must not be set when `best_of` > 1",
    r"`best_of` != 1 is not supported when streaming tokens",
    r"`decoder_input_details` == true is not supported when streaming tokens",
    r"`temperature` must be non-negative",
    r"`repetition_penalty` must be strictly positive",
    r"`frequency_penalty` must be >= -2\.0 and <= 2\.0",
    r"`presence_penalty` must be >= -2\.0 and <= 2\.0",
    r"`top_p` must be > 0\.0 and < 1\.0",
    r"`top_k` must be strictly positive",
    r"`return_k_alternatives` must be strictly positive",
    r"`truncate` must be strictly positive and less than \d+\. Given: \d+",
    r"`typical_p` must be > 0\.0 and < 1\.0",
    r"`max_new_tokens` must be strictly positive",
    r"`inputs` tokens \+ `max_new_tokens` must be <= \d+\. Given: \d+ `inputs` tokens and \d+ `max_new_tokens`",
    r"`inputs` must have less than \d+ tokens\. Given: \d+",
    r"`inputs` cannot be empty",
    r"`stop` supports up to \d+ stop sequences\. Given: \d+",
    r"at most one of `adapter_id` or `adapters` may be provided",
    r"at least one adapter ID must be provided when setting `adapters`",
    r"number of adapter IDs must match number of adapter weights",
    r"`typical_p` is not supported by this server \(vLLM has no typical-p sampling\)",
    r"`watermark` is not supported by this server",
)]


def validation_message(params: GenerateParameters, inputs: str, lim: LoraxLimits, stream: bool) -> str | None:
    try:
        validate_parameters(params, inputs, lim, stream=stream)
    except LoraxValidationError as exc:
        return exc.message
    return None


@PROPERTY
@given(raw=generate_parameters, inputs=st.sampled_from(["", "hi"]), lim=lorax_limits, stream=st.booleans())
def test_validation_passes_or_raises_a_documented_lorax_message(
    raw: dict[str, Any], inputs: str, lim: LoraxLimits, stream: bool
) -> None:
    message = validation_message(GenerateParameters(**raw), inputs, lim, stream)
    assert message is None or any(p.fullmatch(message) for p in DOCUMENTED), message


@PROPERTY
@given(raw=generate_parameters, inputs=st.sampled_from(["", "hi"]), lim=lorax_limits, stream=st.booleans())
@example(raw={"temperature": -1.0, "top_p": 2.0, "top_k": 0}, inputs="", lim=LoraxLimits(max_input_length=511,
         max_total_tokens=512), stream=False)
@example(raw={"best_of": 2, "seed": 1, "temperature": 0.5}, inputs="hi", lim=LoraxLimits(max_input_length=511,
         max_total_tokens=512), stream=False)
def test_validation_reports_the_first_broken_rule_in_lorax_order(
    raw: dict[str, Any], inputs: str, lim: LoraxLimits, stream: bool
) -> None:
    params = GenerateParameters(**raw)
    assert validation_message(params, inputs, lim, stream) == lorax_expected(params, inputs, lim, stream)


@PROPERTY
@given(input_tokens=st.integers(0, 1200), max_new_tokens=maybe(st.integers(1, 1200)))
def test_length_checks_follow_lorax(input_tokens: int, max_new_tokens: int | None) -> None:
    lim = LoraxLimits(max_input_length=MAX_MODEL_LEN - 1, max_total_tokens=MAX_MODEL_LEN)
    params = GenerateParameters(max_new_tokens=max_new_tokens)
    try:
        validate_length(params, input_tokens, lim)
        message = None
    except LoraxValidationError as exc:
        message = exc.message
    if max_new_tokens is not None and input_tokens + max_new_tokens > MAX_MODEL_LEN:
        assert message == (f"`inputs` tokens + `max_new_tokens` must be <= {MAX_MODEL_LEN}. "
                           f"Given: {input_tokens} `inputs` tokens and {max_new_tokens} `max_new_tokens`")
    elif input_tokens > MAX_MODEL_LEN - 1:  # equal is allowed, despite "less than"
        assert message == f"`inputs` must have less than {MAX_MODEL_LEN - 1} tokens. Given: {input_tokens}"
    else:
        assert message is None


@PROPERTY
@given(raw=generate_parameters)
def test_temperature_zero_is_never_sampling(raw: dict[str, Any]) -> None:
    assert not uses_sampling(GenerateParameters(**{**raw, "temperature": 0.0}))
    options, seed = sampling_options(GenerateParameters(**{**raw, "temperature": 0.0, "best_of": None}), stream=False)
    assert options.temperature == 0.0 and options.seed is None and seed is None


@PROPERTY
@given(raw=generate_parameters)
def test_sampling_follows_lorax_semantics(raw: dict[str, Any]) -> None:
    """Sampling iff do_sample, or temperature not in {0, 1}, or top_k > 0, top_p < 1, typical_p < 1;
    temperature 0 is always greedy (lorax-api.md §2.2, server/lorax_server/utils/tokens.py)."""
    p = GenerateParameters(**raw)
    expected = p.temperature != 0 and bool(
        p.do_sample
        or (p.temperature is not None and p.temperature not in (0.0, 1.0))
        or (p.top_k or 0) > 0
        or (p.top_p is not None and p.top_p < 1)
        or (p.typical_p is not None and p.typical_p < 1)
    )
    assert uses_sampling(p) == expected


@PROPERTY
@given(raw=generate_parameters, stream=st.booleans())
def test_native_sampling_options_are_consistent(raw: dict[str, Any], stream: bool) -> None:
    p = GenerateParameters(**raw)
    options, seed = sampling_options(p, stream=stream)
    n = p.best_of if (not stream and p.best_of and p.best_of > 1) else 1
    sampling = uses_sampling(p) or n > 1
    assert options.n == n
    assert options.max_tokens == p.max_new_tokens
    assert options.stop == p.stop and options.include_stop_str_in_output  # LoRAX keeps stop text
    if sampling:
        assert seed is not None and options.seed == seed  # the seed used is the seed reported
        assert p.seed is None or seed == p.seed
        assert options.temperature == (p.temperature if p.temperature is not None else 1.0)
    else:
        assert options.temperature == 0.0 and options.seed is None and seed is None


# -- OpenAI mapping ------------------------------------------------------------------------------

unit = st.floats(0.0, 1.0)
sampling_fields = {
    "temperature": st.floats(0.0, 2.0),
    "top_p": st.floats(0.0, 1.0, exclude_min=True),
    "n": st.integers(1, 8),
    "stop": st.one_of(st.text(min_size=1, max_size=4), st.lists(st.text(min_size=1, max_size=4), max_size=4)),
    "seed": st.integers(-(2**63), 2**64 - 1),
    "presence_penalty": st.floats(-2.0, 2.0),
    "frequency_penalty": st.floats(-2.0, 2.0),
    "logit_bias": st.dictionaries(st.integers(-5, 300).map(str), st.floats(-100.0, 100.0), max_size=4),
    "top_k": st.integers(-1, 100),
    "min_p": unit,
    "repetition_penalty": st.floats(0.0, 3.0, exclude_min=True),
    "ignore_eos": st.booleans(),
    "min_tokens": st.integers(0, 50),
    "stop_token_ids": st.lists(st.integers(0, 257), max_size=4),
    "include_stop_str_in_output": st.booleans(),
    "skip_special_tokens": st.booleans(),
    "response_format": st.one_of(
        st.just({"type": "text"}), st.just({"type": "json_object"}),
        st.fixed_dictionaries({"type": st.just("json_schema"), "json_schema": st.fixed_dictionaries(
            {"schema": st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)})}),
    ),
}
for _name in list(sampling_fields):
    sampling_fields[_name] = maybe(sampling_fields[_name]) if _name not in ("n",) else sampling_fields[_name]

chat_bodies = st.fixed_dictionaries(
    {"model": st.just("synth"), "messages": st.just([{"role": "user", "content": "hi"}])},
    optional={
        **sampling_fields,
        "max_tokens": maybe(st.integers(1, 1000)),
        "max_completion_tokens": maybe(st.integers(1, 1000)),
        "logprobs": st.booleans(),
        "top_logprobs": maybe(st.integers(0, 20)),
        "tools": maybe(st.lists(st.just({"type": "function", "function": {"name": "f"}}), max_size=1)),
        "tool_choice": maybe(st.sampled_from(["none", "auto"])),
    },
)
completion_bodies = st.fixed_dictionaries(
    {"model": st.just("synth"), "prompt": st.just("hi")},
    optional={
        **sampling_fields,
        "max_tokens": maybe(st.integers(1, 1000)),
        "echo": st.booleans(),
        "logprobs": maybe(st.integers(0, 20)),
        "suffix": maybe(st.sampled_from(["", "x"])),
        "best_of": maybe(st.integers(1, 8)),
    },
)


def parse(model: type, body: dict[str, Any]) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError:
        reject()  # e.g. top_logprobs without logprobs: refused by the schema, not the mapping's concern


def assert_common_sampling(options: Any, req: Any) -> None:
    """What both endpoints pass through unchanged."""
    for name in ("temperature", "top_p", "top_k", "min_p", "n", "seed", "presence_penalty", "frequency_penalty",
                 "repetition_penalty", "ignore_eos", "min_tokens", "include_stop_str_in_output",
                 "skip_special_tokens"):
        assert getattr(options, name) == getattr(req, name), name
    stop = req.stop
    assert options.stop == ([stop] if isinstance(stop, str) else list(stop or []))
    assert options.stop_token_ids == list(req.stop_token_ids or [])
    if req.logit_bias:
        assert options.logit_bias == {int(k): v for k, v in req.logit_bias.items()}
    else:
        assert options.logit_bias is None
    fmt = req.response_format
    if fmt is None or fmt.type == "text":
        assert options.structured is None
    elif fmt.type == "json_object":
        assert options.structured == StructuredOutput(json_object=True)
    else:
        assert options.structured == StructuredOutput(json_schema=fmt.json_schema.schema_)


@PROPERTY
@given(body=chat_bodies)
def test_chat_sampling_is_consistent_with_the_request(body: dict[str, Any]) -> None:
    req = parse(ChatCompletionRequest, body)
    if req.tools and req.tool_choice != "none":
        with pytest.raises(InvalidRequestError) as info:
            chat_sampling(req)
        assert info.value.param == "tools"
        return
    options = chat_sampling(req)
    assert_common_sampling(options, req)
    assert options.max_tokens == (req.max_completion_tokens or req.max_tokens)
    assert options.logprobs == ((req.top_logprobs or 0) if req.logprobs else None)
    assert options.prompt_logprobs is None


@PROPERTY
@given(body=completion_bodies)
def test_completion_sampling_is_consistent_with_the_request(body: dict[str, Any]) -> None:
    req = parse(CompletionRequest, body)
    if req.suffix or (req.best_of is not None and req.best_of != req.n):
        with pytest.raises(InvalidRequestError) as info:
            completion_sampling(req)
        assert info.value.param == ("suffix" if req.suffix else "best_of")
        return
    options = completion_sampling(req)
    assert_common_sampling(options, req)
    assert options.max_tokens == req.max_tokens == body.get("max_tokens", 16)
    assert options.logprobs == req.logprobs
    assert options.prompt_logprobs == (req.logprobs if req.echo and req.logprobs is not None else None)


SYNTHETIC = SyntheticEngine(name="synth", max_model_len=MAX_MODEL_LEN)
token_logprobs = st.builds(
    TokenLogprob,
    token_id=st.integers(0, EOS_ID),
    text=st.one_of(st.just(""), st.text(max_size=4)),
    logprob=maybe(st.floats(-50.0, 0.0)),
    top=st.lists(st.builds(TopLogprob, st.integers(0, EOS_ID), st.text(max_size=3), st.floats(-50.0, 0.0)),
                 max_size=3),
)


@PROPERTY
@given(entries=st.lists(token_logprobs, max_size=20), offset=st.integers(0, 10_000))
def test_completion_logprob_offsets_start_at_the_offset_and_never_decrease(
    entries: list[TokenLogprob], offset: int
) -> None:
    body = completion_logprobs(SYNTHETIC, entries, offset)
    tokens, offsets = body["tokens"], body["text_offset"]
    assert len(tokens) == len(body["token_logprobs"]) == len(body["top_logprobs"]) == len(offsets) == len(entries)
    if entries:
        assert offsets[0] == offset
    for i in range(len(entries) - 1):
        step = 0 if SYNTHETIC.is_special(entries[i].token_id) else len(tokens[i])
        assert offsets[i + 1] == offsets[i] + step >= offsets[i]
    for entry, token, top in zip(entries, tokens, body["top_logprobs"]):
        assert token == (entry.text or SYNTHETIC.token_text(entry.token_id))
        assert (top is None) == (entry.logprob is None)
