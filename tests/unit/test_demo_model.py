"""Tests for app.demo_model: the tiny offline Llama demo model and its LoRA adapters."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from app import demo_model
from app.demo_model import (
    DEMO_ADAPTERS,
    DEMO_MODEL_NAME,
    DemoModel,
    build_demo_model,
    ensure_demo_model,
)

PROMPT = "Hello there"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> DemoModel:
    return build_demo_model(tmp_path_factory.mktemp("demo") / "out")


@pytest.fixture(scope="module")
def tokenizer(built):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(built.model_dir)


def _tensor_hashes(directory: Path) -> dict[str, str]:
    from safetensors.torch import load_file

    hashes = {}
    for path in sorted(directory.rglob("*.safetensors")):
        for name, tensor in sorted(load_file(path).items()):
            key = f"{path.relative_to(directory)}:{name}"
            hashes[key] = hashlib.sha256(tensor.contiguous().numpy().tobytes()).hexdigest()
    return hashes


def _greedy(model, tokenizer) -> list[int]:
    import torch

    enc = tokenizer(PROMPT, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(
            **enc, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
    return out[0, enc["input_ids"].shape[1] :].tolist()


def test_layout(built):
    root = built.model_dir.parent
    assert built.model_dir.is_absolute()
    assert (root / ".complete").is_file()
    for name in (
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ):
        assert (built.model_dir / name).is_file(), name
    assert set(built.adapters) == set(DEMO_ADAPTERS)
    for name, path in built.adapters.items():
        assert path == root / "adapters" / name
        assert (path / "adapter_config.json").is_file()
        assert (path / "adapter_model.safetensors").is_file()


def test_configs(built, tokenizer):
    config = json.loads((built.model_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["vocab_size"] == len(tokenizer)
    assert config["head_dim"] == 64
    assert config["hidden_size"] == 128
    assert config["tie_word_embeddings"] is False
    assert config["bos_token_id"] == tokenizer.bos_token_id
    assert config["eos_token_id"] == tokenizer.eos_token_id
    gen = json.loads((built.model_dir / "generation_config.json").read_text())
    assert gen == {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    for path in built.adapters.values():
        adapter = json.loads((path / "adapter_config.json").read_text())
        assert adapter["r"] == 8
        assert adapter["peft_type"] == "LORA"
        assert adapter["target_modules"] == ["k_proj", "o_proj", "q_proj", "v_proj"]
        assert adapter["base_model_name_or_path"] == DEMO_MODEL_NAME


def test_tokenizer_roundtrip(tokenizer):
    assert 900 <= len(tokenizer) <= 1100
    text = "Hello there! The quick brown fox, 42 times: {x} ~ [y] @home\nnew line."
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert ids.count(tokenizer.bos_token_id) == 1
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("<s>", "</s>", "<pad>")


def test_chat_template(tokenizer):
    assert tokenizer.chat_template
    messages = [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "How are you?"},
    ]
    ids = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    assert isinstance(ids, list) and all(isinstance(i, int) for i in ids)
    assert ids[0] == tokenizer.bos_token_id
    assert ids.count(tokenizer.bos_token_id) == 1
    marker = tokenizer("<|assistant|>\n", add_special_tokens=False)["input_ids"]
    assert ids[-len(marker) :] == marker
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == (
        "<s><|system|>\nYou are helpful.</s>\n<|user|>\nHi!</s>\n"
        "<|assistant|>\nHello.</s>\n<|user|>\nHow are you?</s>\n<|assistant|>\n"
    )
    no_prompt = tokenizer.apply_chat_template(messages[:2], tokenize=False)
    assert no_prompt.endswith("Hi!</s>\n")


def test_adapters_change_greedy_output(built, tokenizer):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    def load_base():
        return AutoModelForCausalLM.from_pretrained(built.model_dir, dtype=torch.float32).eval()

    base_model = load_base()
    assert base_model.config.vocab_size == len(tokenizer)
    assert base_model.config.head_dim == 64
    outputs = {"base": _greedy(base_model, tokenizer)}
    for name, path in built.adapters.items():
        model = PeftModel.from_pretrained(load_base(), str(path)).eval()
        outputs[name] = _greedy(model, tokenizer)
    assert all(len(ids) == 12 for ids in outputs.values())
    assert outputs["base"] != outputs["demo-lora-a"]
    assert outputs["base"] != outputs["demo-lora-b"]
    assert outputs["demo-lora-a"] != outputs["demo-lora-b"]
    # Greedy output must be printable text (no special tokens or broken bytes).
    for ids in outputs.values():
        text = tokenizer.decode(ids)
        assert text and all(c == "\n" or " " <= c <= "~" for c in text)


def test_ensure_builds_deterministically_and_reuses(built, tokenizer, tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    cache = tmp_path / "cache" / "demo-model-v1"
    first = ensure_demo_model(cache)
    assert first == DemoModel(
        model_dir=cache.resolve() / "model",
        adapters={n: cache.resolve() / "adapters" / n for n in DEMO_ADAPTERS},
    )
    assert (cache / ".complete").is_file()
    assert [p.name for p in cache.parent.iterdir()] == ["demo-model-v1"]  # temp dir cleaned up

    # A second, independent build is identical to the module fixture's.
    assert AutoTokenizer.from_pretrained(first.model_dir).get_vocab() == tokenizer.get_vocab()
    assert _tensor_hashes(cache) == _tensor_hashes(built.model_dir.parent)
    for rel in ("model/tokenizer.json", "model/config.json", "adapters/demo-lora-a/adapter_config.json"):
        assert (cache / rel).read_bytes() == (built.model_dir.parent / rel).read_bytes()

    # Reuse: no rebuild happens when the marker is present.
    def no_build(*args, **kwargs):
        raise AssertionError("should not rebuild")

    monkeypatch.setattr(demo_model, "build_demo_model", no_build)
    assert ensure_demo_model(cache) == first


def test_ensure_default_cache_dir_uses_env(monkeypatch, tmp_path, built):
    monkeypatch.setenv("LORAGATE_CACHE_DIR", str(tmp_path))
    target = tmp_path / "demo-model-v1"
    shutil.copytree(built.model_dir.parent, target)

    monkeypatch.setattr(demo_model, "build_demo_model", lambda *a, **k: pytest.fail("rebuilt"))
    assert ensure_demo_model().model_dir == target.resolve() / "model"


def test_ensure_race_loser_uses_winner(monkeypatch, tmp_path, built):
    target = tmp_path / "demo-model-v1"
    source = built.model_dir.parent

    def fake_build(out_dir, *, force=False):
        shutil.rmtree(out_dir)
        shutil.copytree(source, out_dir)
        (Path(out_dir) / "loser").write_text("x")
        shutil.copytree(source, target)  # another process finishes first
        (target / "winner").write_text("x")
        return None

    monkeypatch.setattr(demo_model, "build_demo_model", fake_build)
    result = ensure_demo_model(target)
    assert result.model_dir == target.resolve() / "model"
    assert (target / "winner").exists() and not (target / "loser").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["demo-model-v1"]


def test_ensure_refuses_foreign_nonempty_dir(monkeypatch, tmp_path, built):
    target = tmp_path / "demo-model-v1"
    target.mkdir()
    (target / "something").write_text("x")
    monkeypatch.setattr(
        demo_model,
        "build_demo_model",
        lambda out_dir, *, force=False: shutil.copytree(
            built.model_dir.parent, out_dir, dirs_exist_ok=True
        ),
    )
    with pytest.raises(FileExistsError):
        ensure_demo_model(target)
    assert (target / "something").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["demo-model-v1"]


def test_build_existing_complete_is_reused_and_incomplete_refused(built, tmp_path):
    assert build_demo_model(built.model_dir.parent) == built  # marker present: no rebuild
    partial = tmp_path / "partial"
    (partial / "model").mkdir(parents=True)
    with pytest.raises(FileExistsError):
        build_demo_model(partial)


def test_module_import_is_light():
    code = (
        "import sys, app.demo_model; "
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'tokenizers') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""
