"""Gradient checkpointing of the frozen towers: active when asked, and the same gradients as without it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pneumollm.models.components.adapters import RepAdapter
from pneumollm.models.param_count import build_model, compose_model_config
from tests.test_model_configs import OFFLINE_SMALL

CHECKPOINTING = ["encoder.gradient_checkpointing=true", "llm.gradient_checkpointing=true"]


def train_step(choices: dict[str, str], overrides: list[str]) -> tuple[dict[str, torch.Tensor], int, int]:
    """Gradients of every trainable parameter after one seeded step in train mode (adapter dropout on), and how
    often the first encoder and trunk blocks entered their MLP (2 per step when they are recomputed)."""
    torch.manual_seed(0)
    model = build_model(compose_model_config(choices, overrides)).train()
    torch.manual_seed(1)
    with torch.no_grad():  # non-zero adapters, so that every trainable parameter gets a non-zero gradient
        for module in model.modules():
            if isinstance(module, RepAdapter):
                for p in module.parameters():
                    p.normal_(std=0.2)
    calls = {"encoder": 0, "llm": 0}
    encoder_block = next(m for n, m in model.encoder.named_modules() if n.endswith(("layers.0.mlp", "blocks.0.mlp")))
    encoder_block.register_forward_pre_hook(lambda *_: calls.__setitem__("encoder", calls["encoder"] + 1))
    model.llm.model.layers[0].mlp.register_forward_pre_hook(lambda *_: calls.__setitem__("llm", calls["llm"] + 1))
    torch.manual_seed(2)  # the same dropout masks in both runs
    images = torch.rand(3, 1, 224, 224)
    nn.functional.cross_entropy(model(images), torch.tensor([0, 1, 1])).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    return grads, calls["encoder"], calls["llm"]


@pytest.mark.parametrize("encoder", ["tiny_clip_vit_l14", "full_vit_b16_in21k"])
def test_checkpointing_recomputes_the_blocks_and_keeps_every_gradient(encoder: str) -> None:
    choices = {"encoder": encoder}
    small = OFFLINE_SMALL.get(encoder, [])
    plain, enc_plain, llm_plain = train_step(choices, small)
    checkpointed, enc_ckpt, llm_ckpt = train_step(choices, [*small, *CHECKPOINTING])
    assert (enc_plain, llm_plain) == (1, 1)
    assert (enc_ckpt, llm_ckpt) == (2, 2)  # forward + recomputation in the backward pass
    assert plain.keys() == checkpointed.keys()
    for name, grad in plain.items():
        assert grad is not None and grad.abs().sum() > 0, name
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-6, atol=1e-7, msg=name)


def test_checkpointing_is_off_in_eval_mode_and_by_default() -> None:
    model = build_model(compose_model_config(overrides=CHECKPOINTING)).eval()
    assert model.llm.model.is_activation_checkpointing and model.encoder.model.is_activation_checkpointing
    assert not build_model(compose_model_config()).llm.model.is_activation_checkpointing
    calls = []
    model.llm.model.layers[0].mlp.register_forward_pre_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        model(torch.rand(1, 1, 224, 224))
    assert calls == [1]
