"""Merging LoRA adapters into one, as LoRAX's ``merged_adapters`` asks (vLLM alone cannot).

The merge follows PEFT's ``LoraModel.add_weighted_adapter`` for the non-SVD combination types, on
the adapters' tensors directly (no base model in memory): for each LoRA module, adapter ``i`` with
weight ``w_i`` and scale ``s_i`` contributes ``sign(w_i s_i)·sqrt(|w_i s_i|)·A_i`` to ``A`` and
``sqrt(|w_i s_i|)·B_i`` to ``B``, combined with PEFT's own merge functions
(``peft.utils.merge_utils``: ``task_arithmetic`` for ``linear``, ``ties``, ``dare_linear``,
``dare_ties``). The merged adapter has the common rank and ``lora_alpha = r`` (scale 1), so its
update is ``sum_i w_i s_i B_i A_i`` for ``linear``. All adapters must share one rank (PEFT's rule
for these types).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path

import msgspec

from app.adapters.peft_config import LoRAConfig
from app.errors import AdapterLoadError, InvalidRequestError

STRATEGIES = ("linear", "ties", "dare_linear", "dare_ties")
SIGN_METHODS = ("total", "frequency")
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<side>[AB])(?:\.[^.]+)?\.weight$")


class MergeSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A merge request: ``weights`` per component, ``strategy`` (one of :data:`STRATEGIES`),
    ``density`` (fraction of values kept, for ties/dare), ``majority_sign_method``."""

    weights: tuple[float, ...]
    strategy: str = "linear"
    density: float = 0.0
    majority_sign_method: str = "total"


def check_merge_spec(ids: list[str], spec: MergeSpec) -> None:
    """Reject what cannot be merged, with LoRAX's rules. Raises :class:`InvalidRequestError`."""
    if not ids:
        raise InvalidRequestError("at least one adapter ID must be provided when setting `adapters`", param="ids")
    if len(ids) != len(spec.weights):
        raise InvalidRequestError("number of adapter IDs must match number of adapter weights", param="weights")
    if spec.strategy not in STRATEGIES:
        raise InvalidRequestError(
            f"`merge_strategy` must be one of {', '.join(STRATEGIES)}; got `{spec.strategy}`", param="merge_strategy"
        )
    if spec.strategy != "linear" and not 0.0 < spec.density <= 1.0:
        raise InvalidRequestError(f"`density` must be in (0, 1] for `{spec.strategy}`", param="density")
    if spec.majority_sign_method not in SIGN_METHODS:
        raise InvalidRequestError("`majority_sign_method` must be `total` or `frequency`", param="majority_sign_method")


def merge_key(fingerprints: list[str], spec: MergeSpec) -> str:
    """A stable hash of a merge's inputs: the components' fingerprints and the merge parameters."""
    payload = json.dumps(
        [fingerprints, list(spec.weights), spec.strategy, spec.density, spec.majority_sign_method], sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def _load_tensors(directory: str) -> dict:
    """The adapter's tensors. Raises :class:`AdapterLoadError` when they cannot be read."""
    from safetensors.torch import load_file

    try:
        st = Path(directory) / "adapter_model.safetensors"
        if st.is_file():
            return load_file(str(st))
        import torch

        return torch.load(Path(directory) / "adapter_model.bin", map_location="cpu", weights_only=True)
    except Exception as exc:
        raise AdapterLoadError(f"The weights of adapter `{Path(directory).name}` cannot be read.") from exc


def build_merged_adapter(components: list[tuple[str, LoRAConfig]], spec: MergeSpec, out_dir: str | os.PathLike) -> str:
    """Write the merged adapter of ``components`` (directory, config) into ``out_dir`` (created
    atomically; an existing complete one is reused). Returns ``out_dir``. Raises
    :class:`AdapterLoadError` when the components cannot be merged (different ranks, patterns)."""
    import torch
    from peft.utils.merge_utils import dare_linear, dare_ties, task_arithmetic, ties
    from safetensors.torch import save_file

    out = Path(out_dir)
    if (out / "adapter_model.safetensors").is_file():
        return str(out)
    ranks = {cfg.r for _, cfg in components}
    if len(ranks) != 1 or any(cfg.rank_pattern or cfg.alpha_pattern for _, cfg in components):
        raise AdapterLoadError("Adapters can be merged only when they share one rank (and no per-module ranks).")
    rank = ranks.pop()
    per_module: dict[str, dict[str, list]] = {}
    for index, (directory, cfg) in enumerate(components):
        weight_scaled = spec.weights[index] * cfg.scaling
        root = math.sqrt(abs(weight_scaled))
        for key, tensor in _load_tensors(directory).items():
            match = _LORA_KEY.match(key)
            if not match:
                continue
            entry = per_module.setdefault(match["module"], {"A": [], "wA": [], "B": [], "wB": []})
            side = match["side"]
            entry[side].append(tensor.float())
            entry["w" + side].append(root * (1 if weight_scaled >= 0 or side == "B" else -1))
    combine = {
        "linear": lambda t, w: task_arithmetic(t, w),
        "ties": lambda t, w: ties(t, w, spec.density, spec.majority_sign_method),
        "dare_linear": lambda t, w: dare_linear(t, w, spec.density),
        "dare_ties": lambda t, w: dare_ties(t, w, spec.density, spec.majority_sign_method),
    }[spec.strategy]
    merged = {}
    for module, entry in per_module.items():
        for side in ("A", "B"):
            tensors = entry[side]
            merged[f"{module}.lora_{side}.weight"] = combine(tensors, torch.tensor(entry["w" + side])).contiguous()
    if not merged:
        raise AdapterLoadError("The adapters to merge hold no LoRA weights.")
    config = dict(components[0][1].raw)
    config.update(
        r=rank,
        lora_alpha=rank,
        use_rslora=False,
        target_modules=sorted({m for _, cfg in components for m in cfg.target_modules}),
        rank_pattern={},
        alpha_pattern={},
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        save_file(merged, str(tmp / "adapter_model.safetensors"))
        try:
            os.replace(tmp, out)
        except OSError:  # another process won the race: use its copy
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return str(out)
