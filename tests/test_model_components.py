"""Unit tests of PneumoLLM's parts on their own: adapters, token engines, emitter mask, neck, head."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pneumollm.models.components.adapters import (
    AdaptedNorm,
    AdapterSite,
    AdapterSpec,
    GroupedLinear,
    RepAdapter,
    attach_repadapters,
    fold_repadapters,
)
from pneumollm.models.components.emitter import InformationEmitter
from pneumollm.models.components.head import MeanLinearHead
from pneumollm.models.components.neck import Neck
from pneumollm.models.components.token_engines import (
    CoCoOpTokens,
    ContextualMultiTokenEngine,
    CoOpTokens,
    NoTokens,
)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(("dim", "expected"), [(4096, 53_256), (1024, 13_320)])
def test_repadapter_parameter_count_matches_the_paper(dim: int, expected: int) -> None:
    assert n_params(RepAdapter(dim, hidden=8, groups=2)) == expected


def test_repadapter_is_identity_at_initialisation_even_in_training_mode() -> None:
    adapter = RepAdapter(16, hidden=8).train()
    x = torch.randn(3, 5, 16)
    assert torch.equal(adapter(x), x)
    assert adapter.down.weight.abs().sum() > 0  # D is xavier-initialised, only U starts at zero


def test_grouped_linear_is_block_diagonal() -> None:
    layer = GroupedLinear(8, 6, groups=2)
    nn.init.normal_(layer.weight)
    nn.init.normal_(layer.bias)
    x = torch.randn(4, 8)
    dense = layer.dense_weight()
    assert torch.count_nonzero(dense[:3, 4:]) == 0 and torch.count_nonzero(dense[3:, :4]) == 0
    torch.testing.assert_close(layer(x), x @ dense.T + layer.bias)


def test_grouped_linear_rejects_sizes_not_divisible_by_groups() -> None:
    with pytest.raises(ValueError, match="divisible by groups"):
        GroupedLinear(7, 4, groups=2)


class _Block(nn.Module):
    """Stand-in for a transformer block: a norm feeding q/k/v linears."""

    def __init__(self, dim: int, bias: bool) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.q, self.k, self.v = (nn.Linear(dim, dim, bias=bias) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        return torch.cat([self.q(h), self.k(h), self.v(h)], dim=-1)


@pytest.mark.parametrize("bias", [True, False])
def test_folding_a_trained_repadapter_preserves_the_block_function(bias: bool) -> None:
    torch.manual_seed(0)
    block = _Block(12, bias)
    sites = [AdapterSite(block, "norm", ("q", "k", "v"))]
    assert attach_repadapters(sites, 12, AdapterSpec(hidden=4)) == 1
    assert isinstance(block.norm, AdaptedNorm)
    for p in block.norm.adapter.parameters():
        nn.init.normal_(p, std=0.3)
    block.eval()
    x = torch.randn(2, 5, 12)
    before = block(x)
    plain = block.norm.norm(x)
    without_adapter = torch.cat([block.q(plain), block.k(plain), block.v(plain)], dim=-1)
    assert not torch.allclose(before, without_adapter, atol=1e-3)  # the adapter does change the function
    assert fold_repadapters(sites) == 1
    assert isinstance(block.norm, nn.LayerNorm)
    torch.testing.assert_close(block(x), before, atol=1e-5, rtol=1e-5)


def test_adapter_spec_rejects_unknown_options_and_kinds() -> None:
    with pytest.raises(ValueError, match="unknown adapter option"):
        AdapterSpec.parse({"hiden": 8})
    with pytest.raises(ValueError, match="unknown adapter kind"):
        AdapterSpec.parse({"kind": "prefix"})
    with pytest.raises(ValueError, match="not available here"):
        AdapterSpec.parse({"kind": "lora"}, allowed=("repadapter", "none"))
    assert AdapterSpec.parse({"enabled": False}).kind == "none"
    assert AdapterSpec.parse({"enabled": True, "hidden": 4}) == AdapterSpec(kind="repadapter", hidden=4)


def test_cmte_weights_are_convex_combinations_over_source_tokens() -> None:
    torch.manual_seed(0)
    engine = ContextualMultiTokenEngine(width=32, m=4, hidden=12)
    source = torch.randn(3, 6, 32)
    weights = engine.mixing_weights(source)
    assert weights.shape == (3, 6, 4)
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(3, 4))
    torch.testing.assert_close(engine(source), torch.einsum("bdm,bdn->bmn", weights, source))


def test_cmte_parameter_count_matches_the_paper() -> None:
    assert n_params(ContextualMultiTokenEngine(width=1024, m=4, hidden=12)) == 12_352


def test_cmte_freeze_switch_leaves_the_mlp_without_gradients() -> None:
    engine = ContextualMultiTokenEngine(width=16, m=4, freeze=True)
    assert n_params(engine) > 0
    assert not any(p.requires_grad for p in engine.parameters())


def test_coop_tokens_are_shared_and_cocoop_tokens_depend_on_the_image() -> None:
    torch.manual_seed(0)
    source = torch.randn(2, 6, 32)
    coop = CoOpTokens(32, m=3)(source)
    assert coop.shape == (2, 3, 32) and torch.equal(coop[0], coop[1])
    cocoop = CoCoOpTokens(32, m=3)
    out = cocoop(source)
    assert out.shape == (2, 3, 32) and not torch.allclose(out[0], out[1])


@pytest.mark.parametrize("engine", [NoTokens(8), ContextualMultiTokenEngine(8, m=0), CoOpTokens(8, m=0)])
def test_zero_token_engines_return_empty_token_sets(engine: nn.Module) -> None:
    out = engine(torch.randn(2, 5, 8))
    assert out.shape == (2, 0, 8) and engine.num_tokens == 0


def test_emitter_mask_blocks_diagnosis_columns_only() -> None:
    mask = InformationEmitter("emitter")(6, 4, dtype=torch.float32)
    assert mask.shape == (1, 1, 10, 10) and mask.dtype == torch.float32
    assert (mask[..., :6] == 0).all()
    assert (mask[..., 6:] == torch.finfo(torch.float32).min).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mode", ["emitter", "full"])
def test_emitter_softmax_has_no_nan_including_m_zero(mode: str, dtype: torch.dtype) -> None:
    for m in (0, 4):
        mask = InformationEmitter(mode)(6, m, dtype=dtype)
        scores = torch.randn(1, 1, 6 + m, 6 + m).to(dtype) + mask
        probs = torch.softmax(scores.float(), dim=-1)
        assert torch.isfinite(probs).all()
        if mode == "full" or m == 0:
            assert (mask == 0).all()
        else:
            assert (probs[..., 6:] == 0).all()


def test_emitter_rejects_unknown_modes() -> None:
    with pytest.raises(ValueError, match="unknown emitter mode"):
        InformationEmitter("causal")


def test_neck_and_head_shapes_and_paper_parameter_counts() -> None:
    neck = Neck(1024, 4096, hidden=128)
    head = MeanLinearHead(4096, num_classes=2)
    assert n_params(neck) == 659_584 and n_params(head) == 8_192
    tokens = torch.randn(2, 10, 32)
    small_head = MeanLinearHead(32, 3)
    torch.testing.assert_close(small_head.pool(tokens), tokens.mean(dim=1))
    assert small_head(tokens).shape == (2, 3)
    assert Neck(32, 64)(tokens).shape == (2, 10, 64)
