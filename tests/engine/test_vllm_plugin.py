"""The vLLM plugin that keeps base-model tokens free of adapter weights in mixed LoRA batches."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
lora_ops = pytest.importorskip("vllm.lora.ops.torch_ops.lora_ops")


def test_base_model_tokens_get_no_lora_contribution():
    from app.engine.vllm_plugin import register
    from vllm.lora.punica_wrapper import punica_cpu

    register()
    register()  # idempotent
    torch.manual_seed(0)
    inputs = torch.randn(3, 16)
    lora_a = torch.randn(2, 1, 4, 16)  # 2 adapter slots, rank 4 (vLLM's stacked layout)
    indices = torch.tensor([-1, 0, 1])  # token 0 belongs to the base model
    out = torch.full((3, 4), 7.0)
    lora_ops.bgmv_shrink(inputs, lora_a, out, indices, 1.0)
    assert torch.all(out[0] == 0)  # unpatched vLLM gathers slot -1, i.e. the last adapter
    assert torch.allclose(out[1], lora_a[0, 0] @ inputs[1])
    assert torch.allclose(out[2], lora_a[1, 0] @ inputs[2])
    assert punica_cpu.bgmv_shrink is lora_ops.bgmv_shrink
    # the prefill path (sgmv) goes through the same function
    out2 = torch.full((3, 4), 7.0)
    lora_ops.sgmv_shrink(inputs, lora_a, out2, None, torch.tensor([1, 2]), torch.tensor([-1, 1]), 2, 2, 3, 1.0)
    assert torch.all(out2[0] == 0) and torch.allclose(out2[1], lora_a[1, 0] @ inputs[1])
