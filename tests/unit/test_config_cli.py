"""Configuration parsing and the ``loragate`` command line (without starting anything)."""

from __future__ import annotations

import pytest

from app import cli
from app.config import LoRAModule, parse_lora_module, parse_size

# -- --lora-modules ----------------------------------------------------------------------------


def test_parse_lora_module_name_equals_path() -> None:
    assert parse_lora_module("a=/x") == LoRAModule(name="a", path="/x")
    assert parse_lora_module("  sql-lora=/models/sql=v2 ") == LoRAModule(name="sql-lora", path="/models/sql=v2")


def test_parse_lora_module_json() -> None:
    module = parse_lora_module('{"name": "b", "path": "/adapters/b", "base_model_name": "tiny"}')
    assert module == LoRAModule(name="b", path="/adapters/b", base_model_name="tiny")
    assert parse_lora_module('{"name": "c", "path": "rel/c"}') == LoRAModule(name="c", path="rel/c")


@pytest.mark.parametrize(
    "value",
    ["a", "=/x", "a=", "", '{"name": "a"}', '{"path": "/x"}', '{"name": "", "path": "/x"}', "{not json", "[1, 2]"],
)
def test_parse_lora_module_rejects_bad_values(value: str) -> None:
    with pytest.raises(ValueError):
        parse_lora_module(value)


# -- sizes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1GiB", 1024**3),
        ("512M", 512 * 1024**2),
        ("2g", 2 * 1024**3),
        ("1073741824", 1024**3),
        ("0", 0),
        ("64k", 64 * 1024),
        ("1.5G", 3 * 1024**3 // 2),
        ("1T", 1024**4),
        (" 8 MiB ", 8 * 1024**2),
    ],
)
def test_parse_size(value: str, expected: int) -> None:
    assert parse_size(value) == expected


@pytest.mark.parametrize("value", ["", "lots", "1X", "GiB", "-1G", "1 G B B", "1e9"])
def test_parse_size_rejects_garbage(value: str) -> None:
    with pytest.raises(ValueError):
        parse_size(value)


# -- the command line ------------------------------------------------------------------------------


def test_serve_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["serve", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--lora-modules", "--max-lora-rank", "--kv-cache-memory-bytes", "--model", "--max-model-len", "--port"):
        assert flag in out


def test_top_level_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "serve" in out and "demo-model" in out


def test_a_command_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main([])
    assert info.value.code == 2


@pytest.mark.parametrize(
    "argv",
    [
        ["serve", "--lora-modules", "no-equals-sign"],
        ["serve", "--kv-cache-memory-bytes", "lots"],
        ["serve", "--max-lora-rank", "7"],
        ["serve", "--engine", "tensorrt"],
    ],
)
def test_serve_rejects_bad_flags(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    assert "error" in capsys.readouterr().err


def test_serve_flags_reach_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    served = []
    monkeypatch.setattr(cli, "serve", served.append)
    argv = [
        "serve",
        "--model", "/models/tiny",
        "--served-model-name", "tiny",
        "--lora-modules", "a=/adapters/a", '{"name": "b", "path": "/adapters/b"}',
        "--max-lora-rank", "32",
        "--kv-cache-memory-bytes", "2GiB",
        "--max-model-len", "1024",
        "--port", "9001",
    ]  # fmt: skip
    assert cli.main(argv) == 0
    [config] = served
    assert config.model == "/models/tiny"
    assert config.served_model_name == "tiny"
    assert config.lora_modules == (LoRAModule(name="a", path="/adapters/a"), LoRAModule(name="b", path="/adapters/b"))
    assert config.max_lora_rank == 32
    assert config.kv_cache_memory_bytes == 2 * 1024**3
    assert config.max_model_len == 1024
    assert config.port == 9001
    assert config.engine == "vllm"


def test_serve_synthetic_needs_no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    served = []
    monkeypatch.setattr(cli, "serve", served.append)
    assert cli.main(["serve", "--engine", "synthetic"]) == 0
    [config] = served
    assert config.engine == "synthetic" and config.model is None and config.lora_modules == ()
