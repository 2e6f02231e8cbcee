"""Random frozen backbones built on meta and materialised in place: every tensor initialised, reproducibly."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaModel

from pneumollm.models.build_memory import plain_build
from pneumollm.models.components.encoders import CLIP_ARCHITECTURES
from pneumollm.models.components.llm import LLAMA_ARCHITECTURES, LlamaTrunk
from pneumollm.models.components.materialize import build_on_meta, materialize
from pneumollm.models.components.pretrained import load_or_build
from pneumollm.models.tiny import TINY_CLIP_VISION, TINY_LLAMA

TINY = {
    "llama": (LlamaModel, LlamaConfig, LLAMA_ARCHITECTURES, TINY_LLAMA),
    "clip": (CLIPVisionModel, CLIPVisionConfig, CLIP_ARCHITECTURES, TINY_CLIP_VISION),
}


def build(part: str, seed: int | None = 0, dtype: str = "float32", **kwargs: Any) -> torch.nn.Module:
    model_class, config_class, archs, _ = TINY[part]
    return load_or_build(model_class, config_class, archs, pretrained=False, name_or_path=None, architecture="tiny",
                         config_overrides=kwargs.pop("config_overrides", None), frozen_dtype=dtype,
                         attn_implementation="sdpa", init_seed=seed, **kwargs).model


def plain(part: str, seed: int = 0) -> torch.nn.Module:
    model_class, config_class, _, arch = TINY[part]
    return plain_build(model_class, config_class(**arch), torch.float32, "sdpa", seed)


def tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


@pytest.mark.parametrize("part", list(TINY))
def test_materialised_build_matches_transformers_init_and_recomputes_buffers(part: str) -> None:
    reference_model = plain(part)
    built, reference = tensors(build(part)), tensors(reference_model)
    buffers = dict(reference_model.named_buffers())
    assert built.keys() == reference.keys() and buffers
    for name, ref in reference.items():
        got = built[name]
        assert got.device.type == "cpu" and got.dtype == ref.dtype and got.shape == ref.shape, name
        assert torch.isfinite(got.float()).all(), name
        constant = bool((ref == ref.flatten()[0]).all())
        if name in buffers or constant:  # rotary inv_freq, CLIP position_ids, norms' ones, zero biases: exact
            torch.testing.assert_close(got, ref, rtol=0, atol=0, msg=name)
        else:  # random weights: transformers' own init distribution (same std), other draws
            assert not torch.equal(got, ref), name
            if ref.numel() >= 1000:
                assert got.float().std() == pytest.approx(ref.float().std().item(), rel=0.2), name


@pytest.mark.parametrize("part", list(TINY))
def test_two_builds_are_identical_and_give_identical_outputs(part: str) -> None:
    a, b = build(part).eval(), build(part).eval()
    torch.testing.assert_close(tensors(a), tensors(b), rtol=0, atol=0)
    assert not torch.equal(next(build(part, seed=1).parameters()), next(a.parameters()))
    with torch.no_grad():
        if part == "llama":
            x = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(0))
            out_a, out_b = a(inputs_embeds=x).last_hidden_state, b(inputs_embeds=x).last_hidden_state
        else:
            x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
            out_a, out_b = a(pixel_values=x).last_hidden_state, b(pixel_values=x).last_hidden_state
    assert torch.isfinite(out_a).all() and out_a.abs().max() > 0
    torch.testing.assert_close(out_a, out_b, rtol=0, atol=0)


def test_build_leaves_the_callers_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build("llama")
    torch.testing.assert_close(torch.rand(3), expected)


def test_dropped_embedding_is_never_built_and_leaves_the_other_weights_unchanged() -> None:
    model_class, config_class, archs, _ = TINY["llama"]
    kept = load_or_build(model_class, config_class, archs, pretrained=False, name_or_path=None, architecture="tiny",
                         config_overrides=None, frozen_dtype="float32", attn_implementation="sdpa", init_seed=0)
    dropped = load_or_build(model_class, config_class, archs, pretrained=False, name_or_path=None,
                            architecture="tiny", config_overrides=None, frozen_dtype="float32",
                            attn_implementation="sdpa", init_seed=0, drop=("embed_tokens",))
    assert kept.dropped_parameters == 0 and kept.model.embed_tokens is not None
    assert dropped.model.embed_tokens is None and dropped.dropped_parameters == 32 * 64
    expected = {k: v for k, v in tensors(kept.model).items() if not k.startswith("embed_tokens.")}
    torch.testing.assert_close(tensors(dropped.model), expected, rtol=0, atol=0)


def test_a_layer_has_the_same_weights_whatever_the_number_of_layers() -> None:
    one, two = build("llama", config_overrides={"num_hidden_layers": 1}), build("llama")
    shared = tensors(one)
    assert len(two.layers) == 2 and len(one.layers) == 1
    torch.testing.assert_close(shared, {k: v for k, v in tensors(two).items() if k in shared}, rtol=0, atol=0)


def test_bf16_build_is_created_in_bf16() -> None:
    model = build("llama", dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.rotary_emb.inv_freq.dtype == torch.float32  # transformers keeps RoPE frequencies in fp32
    trunk = LlamaTrunk(pretrained=False, architecture="tiny", frozen_dtype="bfloat16")
    assert trunk.frozen_dtype == torch.bfloat16 and trunk.excluded_parameter_count == 32 * 64


def test_a_tensor_no_initialiser_writes_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    model_class, config_class, _, arch = TINY["llama"]
    model = build_on_meta(model_class, config_class(**arch), torch.float32, "sdpa")
    original = model._init_weights

    def skip_norms(module: torch.nn.Module) -> None:
        if "RMSNorm" not in type(module).__name__:
            original(module)

    monkeypatch.setattr(model, "_init_weights", skip_norms)
    with pytest.raises(RuntimeError, match=r"layers\.0\.input_layernorm\.weight .* not initialised"):
        materialize(model, seed=0, device="cpu")


def test_meta_default_device_stays_unmaterialised() -> None:
    with torch.device("meta"):
        model = build("clip")
    assert {t.device.type for t in tensors(model).values()} == {"meta"}
