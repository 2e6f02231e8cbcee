"""bf16 frozen weights at full width on the CPU: size=full's dtype, and a training step under both of
Lightning's CPU precisions (32-true: inputs cast to bf16, adapters fp32; bf16-mixed: CPU autocast)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from torch import nn

from pneumollm.models.components.adapters import RepAdapter
from pneumollm.models.param_count import build_model, compose_model_config
from pneumollm.models.pneumollm import PneumoLLM
from tests.helpers import compose_train

# CLIP ViT-L/14 and LLaMA-7B at their full width, one block each, random weights.
FULL_WIDTH_ONE_LAYER = ["encoder.pretrained=false", "encoder.config_overrides.num_hidden_layers=1",
                        "encoder.multiscale=1", "llm.pretrained=false", "llm.config_overrides.num_hidden_layers=1"]


@pytest.mark.parametrize(("size", "dtype"), [("full", "bfloat16"), ("tiny", "float32")])
def test_size_sets_the_frozen_dtype_on_every_device(tmp_path: Path, size: str, dtype: str) -> None:
    cfg = compose_train([f"size={size}"], tmp_path)
    assert cfg.encoder.frozen_dtype == cfg.llm.frozen_dtype == dtype
    assert cfg.llm.quantization is None and cfg.llm.gradient_checkpointing is False


@pytest.fixture(scope="module")
def full_width() -> PneumoLLM:
    torch.manual_seed(0)
    choices = {"encoder": "full_clip_vit_l14", "llm": "full_llama7b"}
    model = build_model(compose_model_config(choices, FULL_WIDTH_ONE_LAYER))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, RepAdapter):
                module.up.weight.normal_(std=0.02)
    return model.train()


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_full_width_bf16_frozen_model_trains_on_the_cpu(full_width: PneumoLLM, precision: str) -> None:
    model = full_width
    assert model.llm.hidden_size == 4096 and model.encoder.width == 1024
    assert model.llm.frozen_dtype == model.encoder.frozen_dtype == torch.bfloat16
    assert model.llm.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    plugin = Precision() if precision == "32-true" else MixedPrecision("bf16-mixed", "cpu")
    model.zero_grad(set_to_none=True)
    images = torch.rand(2, 1, 224, 224, generator=torch.Generator().manual_seed(0))
    with plugin.forward_context():
        logits = model(images)
    assert logits.dtype == (torch.float32 if precision == "32-true" else torch.bfloat16)
    assert torch.isfinite(logits).all()
    nn.functional.cross_entropy(logits.float(), torch.tensor([0, 1])).backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in trainable.values())
    assert all(torch.isfinite(p.grad).all() for p in trainable.values())
    for part in ("llm.model.layers.0.input_layernorm.adapter.up.weight", "neck.layers.0.weight", "head.linear.weight",
                 "encoder.model.encoder.layers.0.layer_norm1.adapter.down.weight"):
        assert trainable[part].grad.abs().sum() > 0, part
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
