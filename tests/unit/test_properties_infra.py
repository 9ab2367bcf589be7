"""Property tests (hypothesis) for the shared plumbing: config parsing, running statistics, redaction."""

from __future__ import annotations

import json
import math
import re
import statistics
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from app.config import LoRAModule, parse_lora_module, parse_size
from app.redact import MASK, redact
from app.tracking import RunningStats
from tests.unit.test_properties import FEW, PROPERTY, maybe


# -- config parsing ----------------------------------------------------------------------------

UNITS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}


@PROPERTY
@given(
    number=st.integers(0, 2**40),
    unit=st.sampled_from(sorted(UNITS)),
    suffix=st.sampled_from(["", "b", "ib", "i"]),
    upper=st.booleans(),
    space=st.sampled_from(["", " "]),
)
def test_parse_size_round_trips(number: int, unit: str, suffix: str, upper: bool, space: str) -> None:
    if not unit and suffix.startswith("i"):
        suffix = "b"  # "5ib" means nothing
    text = f"{space}{number}{space}{unit}{suffix}{space}"
    text = text.upper() if upper else text
    assert parse_size(text) == number * 1024 ** UNITS[unit]


@PROPERTY
@given(whole=st.integers(0, 1023), tenths=st.integers(0, 9), unit=st.sampled_from(["k", "M", "G", "T"]))
def test_parse_size_takes_fractions(whole: int, tenths: int, unit: str) -> None:
    assert parse_size(f"{whole}.{tenths}{unit}i") == int(float(f"{whole}.{tenths}") * 1024 ** UNITS[unit.lower()])


@FEW
@given(text=st.text(alphabet="0123456789.kmgtibKMGTIB ", max_size=12))
@example(text="1" * 400)
def test_parse_size_returns_bytes_or_raises_value_error(text: str) -> None:
    try:
        size = parse_size(text)
    except ValueError:
        return
    assert isinstance(size, int) and size >= 0


module_names = st.text(st.characters(codec="utf-8", exclude_characters="="), min_size=1, max_size=12).filter(
    lambda s: s == s.lstrip() and not s.startswith("{")
)
module_paths = st.text(st.characters(codec="utf-8"), min_size=1, max_size=20).filter(lambda s: s == s.rstrip())


@PROPERTY
@given(name=module_names, path=module_paths)
def test_parse_lora_module_name_equals_path_round_trips(name: str, path: str) -> None:
    assert parse_lora_module(f"{name}={path}") == LoRAModule(name=name, path=path)


@PROPERTY
@given(name=st.text(min_size=1), path=st.text(min_size=1), base=maybe(st.text()), spaces=st.sampled_from(["", "  "]))
def test_parse_lora_module_json_round_trips(name: str, path: str, base: str | None, spaces: str) -> None:
    module = LoRAModule(name=name, path=path, base_model_name=base)
    data = {"name": name, "path": path} | ({"base_model_name": base} if base is not None else {})
    assert parse_lora_module(spaces + json.dumps(data) + spaces) == module


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=4)),
    lambda inner: st.one_of(st.lists(inner, max_size=2), st.dictionaries(st.text(max_size=3), inner, max_size=2)),
    max_leaves=4,
)


@FEW
@given(name=json_values, path=json_values)
@example(name=1, path="/adapters/a")
def test_parse_lora_module_json_names_and_paths_are_strings(name: Any, path: Any) -> None:
    try:
        module = parse_lora_module(json.dumps({"name": name, "path": path}))
    except ValueError:
        return
    assert isinstance(module.name, str) and isinstance(module.path, str), module


# -- running statistics ------------------------------------------------------------------------

# Durations in seconds, as the server measures them: 0, or from a nanosecond up to an hour.
durations = st.one_of(st.just(0.0), st.floats(1e-9, 3600.0))


@PROPERTY
@given(values=st.lists(durations, min_size=1, max_size=300))
def test_running_stats_agree_with_statistics(values: list[float]) -> None:
    stats = RunningStats()
    for x in values:
        stats.add(x)
    scale = max(values) or 1.0
    assert stats.n == len(values)
    assert stats.max == max(values)
    assert math.isclose(stats.mean, statistics.fmean(values), rel_tol=1e-9, abs_tol=1e-12 * scale)
    assert math.isclose(stats.pstdev, statistics.pstdev(values), rel_tol=1e-9, abs_tol=1e-12 * scale)
    if stats.mean > 0:
        assert math.isclose(stats.cv, stats.pstdev / stats.mean)
    else:
        assert stats.cv == 0.0


def test_running_stats_of_nothing_are_zero() -> None:
    stats = RunningStats()
    assert (stats.n, stats.mean, stats.pstdev, stats.cv) == (0, 0.0, 0.0, 0.0)


# -- redaction ---------------------------------------------------------------------------------

hf_tokens = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789", min_size=20, max_size=40).map(
    lambda s: "hf_" + s
)
bearer_tokens = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/", min_size=8,
                        max_size=40).map(lambda s: s + "==")
# What surrounds a secret in a log line: the start or end of the line, spaces, quotes, JSON and
# query-string punctuation (not letters or digits glued to it).
separators = st.sampled_from([" ", "\n", "\t", '"', "'", ": ", "=", ", ", "&", "?", "(", ")", "{", "}", "[", "]"])
words = st.text(st.characters(codec="utf-8"), max_size=20)


@st.composite
def texts_with_secrets(draw: st.DrawFn) -> tuple[str, list[str]]:
    parts, secrets = [], []
    for _ in range(draw(st.integers(1, 4))):
        parts.append(draw(words))
        kind = draw(st.sampled_from(["hf", "bearer", "authorization"]))
        if kind == "hf":
            secret = draw(hf_tokens)
            parts += [draw(separators), secret, draw(separators)]
        else:
            secret = draw(bearer_tokens)
            scheme = draw(st.sampled_from(["Bearer", "bearer", "BEARER", "Basic"]))
            prefix = "Authorization: " if kind == "authorization" else draw(separators)
            # (not "=" after it: base64 padding is part of a token)
            after = draw(separators.filter(lambda sep: sep != "="))
            parts += [prefix, scheme, draw(st.sampled_from([" ", "  ", "\t"])), secret, after]
        secrets.append(secret)
    return "".join(parts), secrets


@PROPERTY
@given(case=texts_with_secrets())
def test_redact_leaves_no_token_behind(case: tuple[str, list[str]]) -> None:
    text, secrets = case
    clean = redact(text)
    assert MASK in clean
    for secret in secrets:
        assert secret not in clean, (text, clean)


@PROPERTY
@given(text=st.one_of(words, texts_with_secrets().map(lambda c: c[0])))
def test_redact_is_idempotent(text: str) -> None:
    once = redact(text)
    assert redact(once) == once


@PROPERTY
@given(text=st.text(st.characters(codec="utf-8", exclude_characters="=:"), max_size=40).filter(
    lambda s: not re.search(r"(?i)bearer|basic|hf_|akia|asia", s)))
def test_redact_keeps_text_without_secrets(text: str) -> None:
    assert redact(text) == text
