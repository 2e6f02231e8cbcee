"""nf4 / int8 LLM trunks (bitsandbytes): real quantised tiny models on the CPU, byte formulas, clear errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import LlamaForCausalLM

from pneumollm.models.components.adapters import RepAdapter
from pneumollm.models.components.emitter import InformationEmitter
from pneumollm.models.components.llm import LlamaTrunk
from pneumollm.models.components.quantization import (
    QuantizationUnavailableError,
    QuantSpec,
    quantize_linears,
    require_bitsandbytes,
)
from pneumollm.models.param_count import ParameterCounts, build_model, compose_model_config
from pneumollm.models.tiny import tiny_llama_config

SPECS = {"nf4": QuantSpec("nf4", double_quant=False), "nf4+dq": QuantSpec("nf4"), "int8": QuantSpec("int8")}


def bnb_on_cpu():
    """bitsandbytes, or a skip when it is not installed or has no CPU backend."""
    bnb = pytest.importorskip("bitsandbytes")
    if "cpu" not in getattr(bnb, "supported_torch_devices", set()):
        pytest.skip(f"bitsandbytes {bnb.__version__} has no CPU backend")
    return bnb


def quantised_tiny(method: str, *overrides: str, device: str = "cpu") -> nn.Module:
    torch.manual_seed(0)
    return build_model(compose_model_config(overrides=[f"llm.quantization={method}", "llm.frozen_dtype=bfloat16",
                                                       "encoder.frozen_dtype=bfloat16", *overrides]), device)


def test_spec_parsing() -> None:
    assert QuantSpec.parse(None) is None and QuantSpec.parse("none") is None
    assert QuantSpec.parse("nf4") == QuantSpec("nf4", double_quant=True)
    assert QuantSpec.parse({"method": "nf4", "double_quant": False}).label == "nf4"
    with pytest.raises(ValueError, match="nf4"):
        QuantSpec.parse("int4")
    with pytest.raises(ValueError, match="blocksize"):
        QuantSpec.parse({"method": "nf4", "blocksize": 32})


@pytest.mark.parametrize("label", list(SPECS))
def test_byte_formula_equals_what_bitsandbytes_stores(label: str) -> None:
    bnb_on_cpu()
    spec = SPECS[label]
    block = nn.Sequential(nn.Linear(640, 96, bias=False), nn.Linear(96, 640, bias=False)).to(torch.bfloat16)
    assert quantize_linears(block, spec, torch.bfloat16, torch.device("cpu")) == 2
    for layer, (out_f, in_f) in zip(block, [(96, 640), (640, 96)]):
        stored = layer.weight.numel() * layer.weight.element_size()
        if spec.method == "int8":
            stored += layer.weight.SCB.numel() * layer.weight.SCB.element_size()
        else:
            state = layer.weight.quant_state.as_dict(packed=False)
            stored += sum(v.numel() * v.element_size() for v in state.values() if torch.is_tensor(v))
            stored += 4 if spec.double_quant else 0  # the nested offset, a Python float in as_dict
        assert spec.weight_bytes(out_f, in_f) == stored


@pytest.mark.parametrize("method", ["nf4", "int8"])
def test_quantised_trunk_trains_its_adapters_and_refuses_to_fold(method: str) -> None:
    bnb = bnb_on_cpu()
    model = quantised_tiny(method).train()
    reference = build_model(compose_model_config(overrides=["llm.frozen_dtype=bfloat16",
                                                            "encoder.frozen_dtype=bfloat16"]))
    layer = model.llm.model.layers[0]
    expected = bnb.nn.Linear4bit if method == "nf4" else bnb.nn.Linear8bitLt
    assert all(isinstance(m, expected) for m in (layer.self_attn.q_proj, layer.mlp.down_proj))
    assert model.llm.model.norm.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    adapters = [m for m in model.llm.modules() if isinstance(m, RepAdapter)]
    assert len(adapters) == 2
    x = torch.rand(2, 1, 224, 224, generator=torch.Generator().manual_seed(0))
    logits = model(x)
    nn.functional.cross_entropy(logits, torch.tensor([0, 1])).backward()
    assert all(p.grad is not None for a in adapters for p in a.parameters())
    assert all(a.up.weight.grad.abs().sum() > 0 for a in adapters)
    # same frozen weights before quantisation: the quantised trunk stays close to the bf16 one
    for part in ("token_engine", "neck", "head"):
        getattr(reference, part).load_state_dict(getattr(model, part).state_dict())
    with torch.no_grad():
        z_q = model.eval().trunk_output(model.trunk_input(x))
        z = reference.eval().trunk_output(model.trunk_input(x))
    assert (z_q - z).abs().mean() < 0.1 * z.abs().mean()
    with pytest.raises(RuntimeError, match=f"cannot fold RepAdapters into {method}-quantised"):
        model.fold_adapters()


def test_lora_on_a_quantised_trunk_trains_and_refuses_to_merge() -> None:
    bnb_on_cpu()
    model = quantised_tiny("nf4", "llm.adapter.kind=lora").train()
    model(torch.rand(2, 1, 224, 224)).sum().backward()
    lora = [n for n, p in model.llm.named_parameters() if p.requires_grad]
    assert lora and all("lora_" in n for n in lora)
    assert all(p.grad is not None for n, p in model.llm.named_parameters() if p.requires_grad)
    with pytest.raises(RuntimeError, match="cannot merge LoRA weights into nf4-quantised"):
        model.fold_adapters()


@pytest.mark.parametrize("method", ["nf4", "int8"])
def test_pretrained_load_quantises_while_loading(tmp_path: Path, method: str) -> None:
    bnb = bnb_on_cpu()
    torch.manual_seed(11)
    LlamaForCausalLM(tiny_llama_config()).save_pretrained(tmp_path / "llama")
    trunk = LlamaTrunk(name_or_path=str(tmp_path / "llama"), frozen_dtype="bfloat16", quantization=method).eval()
    plain = LlamaTrunk(name_or_path=str(tmp_path / "llama"), frozen_dtype="bfloat16").eval()
    expected = bnb.nn.Linear4bit if method == "nf4" else bnb.nn.Linear8bitLt
    assert isinstance(trunk.model.layers[1].mlp.up_proj, expected)
    assert trunk.model.embed_tokens is None and trunk.excluded_parameter_count == 32 * 64
    tokens, mask = torch.randn(2, 10, 64), InformationEmitter()(6, 4, dtype=torch.bfloat16)
    with torch.no_grad():
        got, want = trunk(tokens, mask), plain(tokens, mask)
    assert (got - want).abs().mean() < 0.1 * want.abs().mean()


def test_missing_bitsandbytes_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(QuantizationUnavailableError, match=r"pneumollm\[quant\]"):
        LlamaTrunk(pretrained=False, architecture="tiny", quantization="nf4")


def test_a_device_bitsandbytes_cannot_run_is_refused_before_building(monkeypatch: pytest.MonkeyPatch) -> None:
    bnb = pytest.importorskip("bitsandbytes")
    monkeypatch.setattr(bnb, "supported_torch_devices", {"cuda"}, raising=False)
    with pytest.raises(QuantizationUnavailableError, match="cannot run int8 on cpu"):
        require_bitsandbytes(QuantSpec("int8"), "cpu")


def test_quantisation_composes_and_counts_on_meta_without_bitsandbytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    cfg = compose_model_config({"encoder": "full_clip_vit_l14", "llm": "full_llama7b"},
                               ["encoder.pretrained=false", "llm.pretrained=false", "llm.quantization=nf4"])
    model = build_model(cfg, device="meta")
    assert model.llm.quantization == QuantSpec("nf4") and model.llm.hidden_size == 4096


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["nf4", "int8"])
def test_quantised_trunk_on_cuda(method: str) -> None:
    pytest.importorskip("bitsandbytes")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    model = quantised_tiny(method, device="cuda").train()
    assert model.llm.model.layers[0].self_attn.q_proj.weight.device.type == "cuda"
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(torch.rand(2, 1, 224, 224, device="cuda"))
    logits.float().sum().backward()
    assert torch.isfinite(logits).all()
    assert all(p.grad is not None for m in model.llm.modules() if isinstance(m, RepAdapter) for p in m.parameters())


def test_an_nf4_trunk_counts_its_weights_not_its_bytes() -> None:
    bnb_on_cpu()
    quantised, plain = quantised_tiny("nf4"), build_model(compose_model_config())
    layer = quantised.llm.model.layers[0].mlp.up_proj
    assert layer.weight.numel() * 2 == 64 * 128  # stored: two 4-bit codes per byte
    assert ParameterCounts.of(quantised) == ParameterCounts.of(plain)
