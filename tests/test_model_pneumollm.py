"""Invariants of the assembled PneumoLLM on tiny backbones: emitter, adapters, folding, what trains."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pneumollm.models.base import ImageClassifier
from pneumollm.models.components.adapters import AdaptedNorm, RepAdapter
from pneumollm.models.param_count import build_model, compose_model_config
from pneumollm.models.pneumollm import PneumoLLM


def tiny_model(*overrides: str, seed: int = 0, **choices: str) -> PneumoLLM:
    torch.manual_seed(seed)
    return build_model(compose_model_config(choices, overrides))


def images(batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.rand(batch, 1, 224, 224, generator=torch.Generator().manual_seed(seed))


def randomise_adapters(model: nn.Module, std: float = 0.2) -> None:
    torch.manual_seed(3)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, RepAdapter):
                for p in module.parameters():
                    p.normal_(std=std)


def test_tiny_model_fulfils_the_classifier_contract() -> None:
    model = tiny_model()
    assert isinstance(model, ImageClassifier)
    assert (model.num_source_tokens, model.num_diagnosis_tokens) == (6, 4)
    x = images(3)
    assert model(x).shape == (3, 2)
    assert model.extract_features(x).shape == (3, model.llm.hidden_size)
    assert model.llm.attn_implementation == "sdpa"
    with torch.no_grad():
        logits, features = model.eval().forward_with_features(x)  # one pass serves the test step
        torch.testing.assert_close(logits, model(x))
        torch.testing.assert_close(features, model.extract_features(x))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_emitter_source_outputs_ignore_diagnosis_tokens(attn: str) -> None:
    model = tiny_model(f"llm.attn_implementation={attn}").eval()
    assert model.llm.attn_implementation == attn
    randomise_adapters(model)
    d = model.num_source_tokens
    with torch.no_grad():
        y = model.trunk_input(images())
        z = model.trunk_output(y)
        y_new_diag = y.clone()
        y_new_diag[:, d:] += 5 * torch.randn_like(y_new_diag[:, d:])
        z_new_diag = model.trunk_output(y_new_diag)
        y_new_first_diag = y.clone()
        y_new_first_diag[:, d] += 5.0
        z_new_first_diag = model.trunk_output(y_new_first_diag)
        y_new_src = y.clone()
        y_new_src[:, 0] += 5.0
        z_new_src = model.trunk_output(y_new_src)
        y_new_last_src = y.clone()
        y_new_last_src[:, d - 1] += 5.0
        z_new_last_src = model.trunk_output(y_new_last_src)
    torch.testing.assert_close(z_new_diag[:, :d], z[:, :d], atol=1e-6, rtol=0)
    # diagnosis tokens do not read each other either ...
    torch.testing.assert_close(z_new_first_diag[:, d + 1:], z[:, d + 1:], atol=1e-6, rtol=0)
    # ... but every diagnosis token reads the source tokens
    assert (z_new_src[:, d:] - z[:, d:]).abs().amax(dim=-1).min() > 1e-4
    # source tokens attend bidirectionally (no causal mask): the first one reads the last one
    assert (z_new_last_src[:, 0] - z[:, 0]).abs().max() > 1e-4


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_without_emitter_source_outputs_do_depend_on_diagnosis_tokens(attn: str) -> None:
    model = tiny_model(f"llm.attn_implementation={attn}", emitter="full").eval()
    d = model.num_source_tokens
    with torch.no_grad():
        y = model.trunk_input(images())
        y2 = y.clone()
        y2[:, d:] += 5.0
        changed = (model.trunk_output(y2)[:, :d] - model.trunk_output(y)[:, :d]).abs().max()
    assert changed > 1e-4


def test_adapters_are_the_identity_at_initialisation() -> None:
    with_adapters = tiny_model()
    without = tiny_model("encoder.adapter.enabled=false", "llm.adapter.kind=none")
    assert any(isinstance(m, RepAdapter) for m in with_adapters.modules())
    assert not any(isinstance(m, RepAdapter) for m in without.modules())
    for part in ("token_engine", "neck", "head"):
        getattr(without, part).load_state_dict(getattr(with_adapters, part).state_dict())
    x = images()
    torch.testing.assert_close(with_adapters.train()(x), without.train()(x), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_folded_adapters_give_the_same_outputs(attn: str) -> None:
    model = tiny_model(f"llm.attn_implementation={attn}", f"encoder.attn_implementation={attn}").eval()
    randomise_adapters(model)
    x = images()
    with torch.no_grad():
        before = model(x)
        assert model.fold_adapters() == 6 + 2
        after = model(x)
    assert not any(isinstance(m, (RepAdapter, AdaptedNorm)) for m in model.modules())
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)


def test_folding_lora_gives_the_same_outputs() -> None:
    model = tiny_model("llm.adapter.kind=lora").eval()
    torch.manual_seed(4)
    with torch.no_grad():
        for name, p in model.llm.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.2)
    x = images()
    with torch.no_grad():
        before = model(x)
        model.fold_adapters()
        after = model(x)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)


def _expected_trainable(model: PneumoLLM) -> set[int]:
    expected = set()
    for module in model.modules():
        if isinstance(module, RepAdapter):
            expected |= {id(p) for p in module.parameters()}
    for part in (model.token_engine, model.neck, model.head):
        expected |= {id(p) for p in part.parameters()}
    return expected


@pytest.mark.parametrize("engine", ["cmte", "coop", "cocoop"])
def test_only_adapters_engine_neck_and_head_train_and_frozen_weights_stay_put(engine: str) -> None:
    model = tiny_model(token_engine=engine).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable_before = [p.detach().clone() for p in trainable]
    optimiser = torch.optim.AdamW(trainable, lr=1e-2)
    loss = nn.functional.cross_entropy(model(images(4)), torch.tensor([0, 1, 0, 1]))
    loss.backward()
    with_grad = {id(p) for p in model.parameters() if p.grad is not None}
    assert with_grad == _expected_trainable(model) == {id(p) for p in trainable}
    optimiser.step()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, frozen_before[name]), name
    assert any(not torch.equal(p, b) for p, b in zip(trainable, trainable_before))
    assert len(frozen_before) > 0


def test_frozen_cmte_switch_leaves_the_engine_without_gradients() -> None:
    model = tiny_model("token_engine.freeze=true").train()
    engine_before = [p.detach().clone() for p in model.token_engine.parameters()]
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(trainable, lr=1e-2)
    nn.functional.cross_entropy(model(images(2)), torch.tensor([0, 1])).backward()
    optimiser.step()
    assert engine_before and all(p.grad is None and not p.requires_grad for p in model.token_engine.parameters())
    assert all(torch.equal(p, b) for p, b in zip(model.token_engine.parameters(), engine_before))
    assert model.neck.layers[0].weight.grad is not None


def test_lora_option_trains_only_lora_weights_in_the_llm() -> None:
    model = tiny_model("llm.adapter.kind=lora").train()
    llm_trainable = [n for n, p in model.llm.named_parameters() if p.requires_grad]
    assert llm_trainable and all("lora_" in n for n in llm_trainable)
    assert not any(isinstance(m, RepAdapter) for m in model.llm.modules())
    nn.functional.cross_entropy(model(images(2)), torch.tensor([0, 1])).backward()
    llm_with_grad = {n for n, p in model.llm.named_parameters() if p.grad is not None}
    assert llm_with_grad == set(llm_trainable)


@pytest.mark.parametrize("emitter", ["emitter", "full"])
@pytest.mark.parametrize("engine_overrides", [("none", ()), ("cmte", ("token_engine.m=0",))])
def test_no_diagnosis_tokens_gives_finite_outputs(emitter: str, engine_overrides: tuple) -> None:
    engine, overrides = engine_overrides
    model = tiny_model(*overrides, token_engine=engine, emitter=emitter).train()
    assert model.num_diagnosis_tokens == 0
    logits = model(images())
    logits.sum().backward()
    assert torch.isfinite(logits).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_mixed_precision_frozen_weights_keep_fp32_adapters() -> None:
    model = tiny_model("encoder.frozen_dtype=bfloat16", "llm.frozen_dtype=bfloat16").train()
    assert model.llm.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    for autocast in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = model(images())
        assert torch.isfinite(logits).all()
        assert logits.dtype == (torch.bfloat16 if autocast else torch.float32)
        logits.sum().backward()
