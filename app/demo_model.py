"""Build a tiny, deterministic Llama-architecture demo model plus two LoRA adapters.

Used by ``loragate demo-model DIR`` and by the test suite. Everything is built
offline from an embedded English corpus and fixed random seeds, so no download
from the Hugging Face hub is needed.

Layout written by :func:`build_demo_model`::

    out_dir/model/                     config.json, generation_config.json,
                                       model.safetensors, tokenizer.json,
                                       tokenizer_config.json (with chat_template)
    out_dir/adapters/demo-lora-a/      adapter_config.json, adapter_model.safetensors
    out_dir/adapters/demo-lora-b/      (PEFT LoRA format)
    out_dir/.complete                  completion marker, written last

The adapters' ``base_model_name_or_path`` is :data:`DEMO_MODEL_NAME`
(``"loragate-demo"``), not a filesystem path, so a build stays valid when its
directory is moved or renamed (as :func:`ensure_demo_model` does).

Heavy libraries (torch, transformers, peft, tokenizers) are imported inside the
functions so importing this module stays cheap.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

DEMO_MODEL_NAME = "loragate-demo"
DEMO_ADAPTERS = ("demo-lora-a", "demo-lora-b")

COMPLETE_MARKER = ".complete"
BUILD_VERSION = "demo-model-v1"

_MODEL_SEED = 1234
_ADAPTER_SEEDS = {"demo-lora-a": 1001, "demo-lora-b": 2002}
_VOCAB_TARGET = 1000
_LM_HEAD_SCALE = 40.0  # makes next-token distributions peaked (logit std ~9)

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = (BOS, EOS, PAD, *ROLE_TOKENS)

# One BOS, then "<|role|>\ncontent</s>\n" per message, then the assistant marker.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('Unsupported role: ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

_CORPUS = """\
The morning train left the station a little after seven, carrying farmers,
students and a few tired travelers who had been awake all night. Outside the
window the fields were still covered with a thin layer of frost, and the sun
rose slowly over the distant hills.

Hello there! How are you today? I am fine, thank you for asking. What would you
like to talk about? We could discuss the weather, a good book, or the best way
to cook rice. Please tell me what you need and I will try to help.

A computer program is a list of instructions that a machine can follow. Good
programs are written clearly, tested carefully, and changed often. When a test
fails, the engineer reads the error message, finds the bug, and fixes it before
the next release of the software.

In the old harbor town, fishermen repaired their nets while children played on
the wooden docks. Every evening the lighthouse keeper climbed the narrow stairs
to light the lamp, and ships far out at sea watched for its steady white beam.

The recipe is simple: mix two cups of flour with one cup of warm water, add a
pinch of salt and a spoon of oil, then knead the dough for ten minutes. Let it
rest for an hour, shape it into small rounds, and bake them until golden brown.

Scientists measure the temperature of the ocean at many depths. Their data show
that water near the surface warms faster than water far below. These numbers
help us understand weather, climate, and the lives of fish and other animals.

The library opens at nine and closes at five on weekdays. Visitors may borrow up
to six books at a time for three weeks. Quiet study rooms are available on the
second floor, and free wireless internet is provided for everyone.

She asked the question again, more slowly this time. Why do people tell stories?
Perhaps because stories help us remember what happened, imagine what could be,
and share our hopes and fears with friends, family, and strangers alike.

Numbers and letters: 0 1 2 3 4 5 6 7 8 9, one two three four five six seven eight
nine ten. The quick brown fox jumps over the lazy dog. Yes, no, maybe, always,
never, sometimes, often, rarely, today, tomorrow, yesterday.
"""


@dataclass(frozen=True)
class DemoModel:
    """Paths of a built demo model: ``model_dir`` and ``adapters`` (adapter name -> dir)."""

    model_dir: Path
    adapters: dict[str, Path] = field(default_factory=dict)


def _layout(out_dir: Path) -> DemoModel:
    return DemoModel(
        model_dir=out_dir / "model",
        adapters={name: out_dir / "adapters" / name for name in DEMO_ADAPTERS},
    )


def _build_tokenizer():
    """Train a deterministic byte-level BPE and wrap it in PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_VOCAB_TARGET,
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=list(ROLE_TOKENS),
        model_max_length=1024,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _build_base_model(tokenizer):
    """Create the seeded random LlamaForCausalLM with peaked output distributions."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=64,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        initializer_range=0.02,
        rms_norm_eps=1e-5,
        dtype="float32",
    )
    torch.manual_seed(_MODEL_SEED)
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(_LM_HEAD_SCALE)
        # Zero rows give logit 0, far below the top logits, so greedy decoding
        # never emits special tokens (incl. EOS) or bytes that decode badly.
        model.lm_head.weight[_unprintable_token_ids(tokenizer)] = 0.0
    return model


def _unprintable_token_ids(tokenizer) -> list[int]:
    """Ids of special tokens and tokens that do not decode to printable ASCII."""
    bad = []
    for token_id in range(len(tokenizer)):
        text = tokenizer.decode([token_id])
        special = token_id in tokenizer.all_special_ids or text in SPECIAL_TOKENS
        if special or not text or not all(c == "\n" or " " <= c <= "~" for c in text):
            bad.append(token_id)
    return bad


def _add_lora(base_state, config, seed: int):
    """Return a PEFT LoRA model (random A and B) over a fresh copy of the base weights."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    base = LlamaForCausalLM(config).to(torch.float32)
    base.load_state_dict(base_state)
    base.name_or_path = DEMO_MODEL_NAME  # peft copies this into base_model_name_or_path
    lora_config = LoraConfig(
        r=8,
        lora_alpha=16,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        init_lora_weights=False,
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(seed)
    peft_model = get_peft_model(base, lora_config)
    # init_lora_weights=False leaves nn.Linear's default init on both A and B,
    # which already changes greedy output clearly; re-draw deterministically
    # from our own generator so the result doesn't depend on peft internals.
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(peft_model.named_parameters()):
            if "lora_A" in name or "lora_B" in name:
                bound = 1.0 / param.shape[1] ** 0.5
                param.copy_((torch.rand(param.shape, generator=gen) * 2 - 1) * bound)
    return peft_model.eval()


def _sort_target_modules(config_path: Path) -> None:
    """peft stores target_modules from a set; sort it so builds are byte-identical."""
    data = json.loads(config_path.read_text())
    data["target_modules"] = sorted(data["target_modules"])
    config_path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def build_demo_model(out_dir: str | os.PathLike, *, force: bool = False) -> DemoModel:
    """Build the demo model and its LoRA adapters into ``out_dir``.

    Args:
        out_dir: target directory (created if needed). Only ``model/``,
            ``adapters/`` and ``.complete`` inside it are written.
        force: rebuild even if ``out_dir`` already holds a complete build;
            existing ``model/``, ``adapters/`` and marker are removed first.

    Returns:
        A :class:`DemoModel` with absolute paths. If a complete build already
        exists and ``force`` is false, it is returned without rebuilding.

    Raises:
        FileExistsError: ``out_dir`` holds ``model/`` or ``adapters/`` from an
            incomplete build (no ``.complete`` marker) and ``force`` is false.
        ImportError: torch, transformers, tokenizers or peft is missing.
        OSError: the directory cannot be written.
    """
    out = Path(out_dir).expanduser().resolve()
    layout = _layout(out)
    marker = out / COMPLETE_MARKER
    if marker.is_file() and not force:
        return layout
    leftovers = [out / "model", out / "adapters"]
    if any(p.exists() for p in leftovers) and not force:
        raise FileExistsError(f"{out} holds an incomplete demo model build; use force=True")
    marker.unlink(missing_ok=True)
    for p in leftovers:
        if p.exists():
            shutil.rmtree(p)
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = _build_tokenizer()
    model = _build_base_model(tokenizer)
    layout.model_dir.mkdir(parents=True)
    model.save_pretrained(layout.model_dir, safe_serialization=True)
    tokenizer.save_pretrained(layout.model_dir, save_jinja_files=False)
    gen_config = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    (layout.model_dir / "generation_config.json").write_text(json.dumps(gen_config, indent=2) + "\n")
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    for name in DEMO_ADAPTERS:
        peft_model = _add_lora(base_state, model.config, _ADAPTER_SEEDS[name])
        peft_model.save_pretrained(
            layout.adapters[name], safe_serialization=True, save_embedding_layers=False
        )
        _sort_target_modules(layout.adapters[name] / "adapter_config.json")

    _make_world_readable(out)
    marker.write_text(json.dumps({"version": BUILD_VERSION, "name": DEMO_MODEL_NAME}) + "\n")
    return layout


def _make_world_readable(out: Path) -> None:
    """chmod the build 0755/0644 (safetensors writes 0600, mkdtemp makes 0700) so a
    build made by one user, e.g. at image build time, can be served by another."""
    out.chmod(0o755)
    for top in (out / "model", out / "adapters"):
        top.chmod(0o755)
        for path in top.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)


def default_cache_dir() -> Path:
    """Return ``$LORAGATE_CACHE_DIR/demo-model-v1`` or ``~/.cache/loragate/demo-model-v1``."""
    root = os.environ.get("LORAGATE_CACHE_DIR") or "~/.cache/loragate"
    return Path(root).expanduser() / BUILD_VERSION


def ensure_demo_model(cache_dir: str | os.PathLike | None = None) -> DemoModel:
    """Return the cached demo model, building it once if needed.

    Args:
        cache_dir: directory holding the build; default :func:`default_cache_dir`.

    Returns:
        A :class:`DemoModel` inside ``cache_dir``. A build whose ``.complete``
        marker is present is reused as-is.

    Raises:
        FileExistsError: ``cache_dir`` exists, is not empty and holds no
            complete build (it is left untouched).
        ImportError / OSError: as for :func:`build_demo_model`.

    Safe against concurrent callers: each builds into a temporary sibling
    directory and renames it into place; a loser of the rename race discards its
    own build and uses the winner's.
    """
    target = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = target.resolve()
    if (target / COMPLETE_MARKER).is_file():
        return _layout(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        build_demo_model(tmp, force=True)
        try:
            os.rename(tmp, target)  # atomic; replaces only a missing or empty dir
        except OSError:
            if (target / COMPLETE_MARKER).is_file():
                return _layout(target)  # another process won the race
            raise FileExistsError(f"{target} exists but holds no complete demo model build") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return _layout(target)
