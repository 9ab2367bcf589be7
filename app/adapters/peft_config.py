"""Reading and checking a PEFT LoRA adapter's ``adapter_config.json`` before the engine sees it.

The checks vLLM makes only when an adapter is first used in a batch (where a failure kills the
engine, shared/reference/vllm-engine.md §0.1) are repeated here, with clear messages; vLLM's own
``add_lora`` then validates the weights themselves (shapes, target modules) without harm.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import msgspec

from app.errors import AdapterLoadError


class LoRAConfig(msgspec.Struct, frozen=True, kw_only=True):
    """What loragate needs from ``adapter_config.json``: rank ``r``, ``lora_alpha``,
    ``target_modules``, ``use_rslora``, per-module ``rank_pattern``/``alpha_pattern``, the base model
    it was trained on, and the raw dict (to write merged adapters)."""

    r: int
    lora_alpha: float
    target_modules: list[str]
    use_rslora: bool = False
    rank_pattern: dict[str, int] = {}
    alpha_pattern: dict[str, float] = {}
    base_model_name_or_path: str | None = None
    raw: dict[str, Any] = {}

    @property
    def max_rank(self) -> int:
        return max([self.r, *self.rank_pattern.values()])

    @property
    def scaling(self) -> float:
        """The LoRA scale of modules without a pattern: alpha / r (alpha / sqrt(r) with rsLoRA)."""
        return self.lora_alpha / (math.sqrt(self.r) if self.use_rslora else self.r)


def read_lora_config(directory: str | Path, *, name: str, max_lora_rank: int) -> LoRAConfig:
    """Parse and check ``directory/adapter_config.json``. Raises :class:`AdapterLoadError` naming
    the adapter (never the path) when it is unreadable, not a LoRA adapter, or of a rank above
    ``max_lora_rank``."""
    try:
        raw = json.loads((Path(directory) / "adapter_config.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterLoadError(f"Adapter `{name}` has an unreadable adapter_config.json.") from exc
    if not isinstance(raw, dict):
        raise AdapterLoadError(f"Adapter `{name}` has an invalid adapter_config.json.")
    peft_type = str(raw.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise AdapterLoadError(f"Adapter `{name}` is a {peft_type} adapter; only LoRA adapters are supported.")
    try:
        target = raw.get("target_modules") or []
        config = LoRAConfig(
            r=int(raw["r"]),
            lora_alpha=float(raw.get("lora_alpha", raw["r"])),
            target_modules=[target] if isinstance(target, str) else list(target),
            use_rslora=bool(raw.get("use_rslora", False)),
            rank_pattern={k: int(v) for k, v in (raw.get("rank_pattern") or {}).items()},
            alpha_pattern={k: float(v) for k, v in (raw.get("alpha_pattern") or {}).items()},
            base_model_name_or_path=raw.get("base_model_name_or_path"),
            raw=raw,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise AdapterLoadError(f"Adapter `{name}` has an adapter_config.json without a valid rank `r`.") from exc
    if config.r <= 0:
        raise AdapterLoadError(f"Adapter `{name}` has rank {config.r}; the rank must be positive.")
    if config.max_rank > max_lora_rank:
        raise AdapterLoadError(
            f"Adapter `{name}` has rank {config.max_rank}, more than this server's --max-lora-rank {max_lora_rank}."
        )
    return config


_LORA_WEIGHT = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<side>[AB])(?:\.[^.]+)?\.weight$")


def _tensor_shapes(directory: Path) -> dict[str, tuple[int, ...]]:
    st = directory / "adapter_model.safetensors"
    if st.is_file():
        from safetensors import safe_open

        with safe_open(str(st), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    for name in ("adapter_model.bin", "adapter_model.pt"):
        if (directory / name).is_file():
            import torch

            state = torch.load(directory / name, map_location="cpu", weights_only=True)
            return {k: tuple(v.shape) for k, v in state.items()}
    return {}


def check_shapes(directory: str | Path, *, name: str, linear_shapes: dict[str, tuple[int, int]]) -> None:
    """Check that every LoRA weight fits the base model: ``lora_A`` of a module is
    ``(r, in_features)`` and ``lora_B`` is ``(out_features, r)``, for a module the base model has.
    ``linear_shapes`` maps module paths (e.g. ``model.layers.0.self_attn.q_proj``) to
    ``(in_features, out_features)``. vLLM 0.32 loads a misfit adapter without complaint and then
    dies on its first batch, so this runs before ``add_lora``. Raises :class:`AdapterLoadError`."""
    try:
        shapes = _tensor_shapes(Path(directory))
    except Exception as exc:
        raise AdapterLoadError(f"Adapter `{name}` has unreadable weights.") from exc
    if not shapes:
        raise AdapterLoadError(f"Adapter `{name}` holds no weights.")
    for key, shape in shapes.items():
        match = _LORA_WEIGHT.match(key)
        if match is None:
            continue
        module = match["module"]
        if module not in linear_shapes:
            raise AdapterLoadError(f"Adapter `{name}` does not fit the base model: it has no module `{module}`.")
        in_features, out_features = linear_shapes[module]
        expected = in_features if match["side"] == "A" else out_features
        got = shape[1] if match["side"] == "A" else shape[0]
        if len(shape) != 2 or got != expected:
            raise AdapterLoadError(
                f"Adapter `{name}` does not fit the base model: `{module}` lora_{match['side']} has shape "
                f"{list(shape)}, the model needs {expected} features there."
            )
