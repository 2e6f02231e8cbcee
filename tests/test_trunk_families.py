"""Every supported LLM trunk family on a tiny random build saved with save_pretrained and loaded through the trunk:
loading, Gemma's input scaling, emitter isolation under sdpa and eager, adapters (identity, folding, LoRA merge),
quantised builds, refusals, the predict path, and the full-size architectures' parameter counts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from pneumollm.errors import ConfigError
from pneumollm.inference.models import fold_for_inference
from pneumollm.models.components.adapters import AdaptedNorm, RepAdapter
from pneumollm.models.components.emitter import InformationEmitter
from pneumollm.models.components.llm import DecoderTrunk, LlamaTrunk
from pneumollm.models.components.trunk_architectures import (
    FULL_SIZE_TRUNKS,
    TRUNK_ARCHITECTURES,
    TRUNK_CHECKPOINTS,
    trunk_config,
)
from pneumollm.models.components.trunk_families import (
    TRUNK_FAMILIES,
    UnsupportedTrunkError,
    trunk_family,
)
from pneumollm.models.param_count import build_model, compose_model_config
from pneumollm.models.tiny import TINY_TRUNKS
from pneumollm.models.trunk_sizes import trunk_memory_table, trunk_size

FAMILIES = list(TINY_TRUNKS)
SOURCE, DIAGNOSIS = 6, 4
FOLD_TOLERANCE = 1e-5


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls on a shared CPU run faster without thread contention
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, torch.nn.Module]]:
    """Per family: a folder holding a tiny random causal LM (seed 11, not the trunk's init_seed) and that model."""
    root = tmp_path_factory.mktemp("trunks")
    out = {}
    for family in FAMILIES:
        torch.manual_seed(11)
        model = AutoModelForCausalLM.from_config(trunk_config(**TINY_TRUNKS[family])).eval()
        model.save_pretrained(root / family)
        out[family] = (root / family, model)
    return out


def load(saved, family: str, **kwargs) -> DecoderTrunk:
    return DecoderTrunk(name_or_path=str(saved[family][0]), pretrained=True, frozen_dtype="float32", **kwargs).eval()


def tokens(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, SOURCE + DIAGNOSIS, 64, generator=torch.Generator().manual_seed(seed))


def emitter_mask() -> torch.Tensor:
    return InformationEmitter()(SOURCE, DIAGNOSIS)


def causal_mask(length: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    blocked = torch.ones(length, length, dtype=torch.bool).triu(1)
    return torch.zeros(length, length, dtype=dtype).masked_fill(blocked, torch.finfo(dtype).min)[None, None]


def max_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


# ---- loading, input scaling, emitter isolation ----

@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("family", FAMILIES)
def test_trunk_fed_raw_embeddings_equals_the_hf_model_from_input_ids(saved, family: str, attn: str) -> None:
    """The HF model embeds ids itself (Gemma: times sqrt(hidden) in its embedding module); the trunk, fed the plain
    embedding rows with the causal mask, must give the same hidden states: weights loaded, inputs scaled right."""
    if family == "gemma2" and attn == "sdpa":
        pytest.skip("Gemma-2 has no sdpa path in transformers (refusal tested below)")
    _, causal_lm = saved[family]
    reference = causal_lm.model
    reference.config._attn_implementation = attn
    trunk = load(saved, family, adapter={"kind": "none"}, attn_implementation=attn)
    assert trunk.attn_implementation == attn and trunk.model.embed_tokens is None
    assert (trunk.input_scale is not None) == trunk.family.scale_inputs
    ids = torch.randint(3, 32, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(input_ids=ids).last_hidden_state
        got = trunk(reference.embed_tokens.weight[ids], causal_mask(10))
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        if trunk.family.scale_inputs:  # without the scaling the trunk would differ: the test can fail
            assert max_error(trunk.model(inputs_embeds=reference.embed_tokens.weight[ids],
                                         attention_mask=causal_mask(10)).last_hidden_state, expected) > 1e-2


@pytest.mark.parametrize("family", ["gemma", "gemma2", "gemma3"])
def test_gemma_scaling_rounds_the_normaliser_to_the_weights_dtype_like_hf(tmp_path: Path, family: str) -> None:
    torch.manual_seed(11)
    model = AutoModelForCausalLM.from_config(trunk_config(**TINY_TRUNKS[family]), dtype=torch.bfloat16,
                                             attn_implementation="eager").eval()
    model.save_pretrained(tmp_path / family)
    trunk = DecoderTrunk(name_or_path=str(tmp_path / family), frozen_dtype="bfloat16", adapter={"kind": "none"},
                         attn_implementation="eager").eval()
    ids = torch.randint(3, 32, (1, 10), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        rows = model.model.embed_tokens.weight[ids]
        torch.testing.assert_close(trunk.embed(rows), model.model.embed_tokens(ids), rtol=0, atol=0)
        torch.testing.assert_close(trunk(rows, causal_mask(10, torch.bfloat16)),
                                   model.model(input_ids=ids).last_hidden_state.float(), rtol=0, atol=0)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("family", FAMILIES)
def test_emitter_isolates_the_source_tokens(saved, family: str, attn: str) -> None:
    if family == "gemma2" and attn == "sdpa":
        pytest.skip("Gemma-2 has no sdpa path in transformers")
    trunk = load(saved, family, attn_implementation=attn)
    x = tokens()
    changed = x.clone()
    changed[:, SOURCE:] = torch.randn(2, DIAGNOSIS, 64)
    with torch.no_grad():
        a, b = trunk(x, emitter_mask()), trunk(changed, emitter_mask())
        full = trunk(changed, InformationEmitter("full")(SOURCE, DIAGNOSIS))
    assert max_error(a[:, :SOURCE], b[:, :SOURCE]) <= 1e-6
    assert max_error(a[:, SOURCE:], b[:, SOURCE:]) > 1e-3  # the diagnosis tokens do change
    assert max_error(full[:, :SOURCE], b[:, :SOURCE]) > 1e-3  # without the emitter the sources would see them


# ---- adapters ----

def perturb_adapters(trunk: DecoderTrunk) -> int:
    """Give every adapter non-zero weights (they start as the identity); returns how many adapter modules."""
    generator = torch.Generator().manual_seed(3)
    count = 0
    with torch.no_grad():
        for name, param in trunk.named_parameters():
            if param.requires_grad and (".up." in name or "lora_B" in name or name.endswith("down.bias")):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
                count += ".up.weight" in name or "lora_B" in name
    return count


@pytest.mark.parametrize("kind", ["repadapter", "lora"])
@pytest.mark.parametrize("family", FAMILIES)
def test_adapters_start_as_the_identity(saved, family: str, kind: str) -> None:
    bare, adapted = load(saved, family, adapter={"kind": "none"}), load(saved, family, adapter={"kind": kind})
    assert any(p.requires_grad for p in adapted.parameters())
    with torch.no_grad():
        torch.testing.assert_close(adapted(tokens(), emitter_mask()), bare(tokens(), emitter_mask()))


@pytest.mark.parametrize("family", FAMILIES)
def test_repadapters_fold_exactly(saved, family: str) -> None:
    trunk = load(saved, family)
    layers = len(trunk.model.layers)
    assert perturb_adapters(trunk) == layers
    targets = [site.block.get_submodule(t) for site in trunk.adapter_sites() for t in site.targets]
    before_weights = [t.weight.clone() for t in targets]
    with torch.no_grad():
        before = trunk(tokens(), emitter_mask())
        assert trunk.fold_adapters() == layers
        after = trunk(tokens(), emitter_mask())
    assert not any(isinstance(m, (AdaptedNorm, RepAdapter)) for m in trunk.modules())
    assert all(not torch.equal(t.weight, w) for t, w in zip(targets, before_weights))
    assert max_error(before, after) <= FOLD_TOLERANCE
    assert max_error(before, load(saved, family, adapter={"kind": "none"})(tokens(), emitter_mask())) > 1e-3


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_merges_exactly(saved, family: str) -> None:
    from peft.tuners.lora import LoraLayer

    trunk = load(saved, family, adapter={"kind": "lora"})
    wrapped = sorted({name.rsplit(".", 1)[-1] for name, m in trunk.model.named_modules() if isinstance(m, LoraLayer)})
    assert wrapped == (["qkv_proj"] if family == "phi3" else ["k_proj", "q_proj", "v_proj"])
    assert perturb_adapters(trunk) > 0
    with torch.no_grad():
        before = trunk(tokens(), emitter_mask())
        assert trunk.fold_adapters() == len(trunk.model.layers) * len(trunk.family.qkv)
        after = trunk(tokens(), emitter_mask())
    assert max_error(before, after) <= FOLD_TOLERANCE
    assert max_error(before, load(saved, family, adapter={"kind": "none"})(tokens(), emitter_mask())) > 1e-3


@pytest.mark.parametrize("family", FAMILIES)
def test_adapters_get_gradients_through_a_checkpointed_trunk(family: str) -> None:
    trunk = DecoderTrunk(pretrained=False, architecture=f"tiny_{family}", frozen_dtype="float32",
                         gradient_checkpointing=True).train()
    trunk(tokens(), emitter_mask()).square().mean().backward()
    trainable = {n: p for n, p in trunk.named_parameters() if p.requires_grad}
    assert trainable and all(p.grad is not None for p in trainable.values())
    # U starts at 0, so only U gets gradients in the first step
    assert all(p.grad.abs().max() > 0 for n, p in trainable.items() if ".up.weight" in n)
    assert all(p.grad is None for p in trunk.parameters() if not p.requires_grad)


def test_llama_lora_targets_map_onto_phi3s_fused_layers() -> None:
    phi3, llama = TRUNK_FAMILIES["phi3"], TRUNK_FAMILIES["llama"]
    assert phi3.lora_targets(("q_proj", "k_proj", "v_proj")) == ("qkv_proj",)
    assert phi3.lora_targets(("q_proj", "o_proj", "up_proj", "down_proj")) == ("qkv_proj", "o_proj", "gate_up_proj",
                                                                                "down_proj")
    assert llama.lora_targets(("q_proj", "v_proj")) == ("q_proj", "v_proj")


# ---- quantised builds ----

@pytest.mark.parametrize("family", FAMILIES)
def test_nf4_build_runs_isolates_and_refuses_to_fold(family: str) -> None:
    bnb = pytest.importorskip("bitsandbytes")
    if "cpu" not in getattr(bnb, "supported_torch_devices", set()):
        pytest.skip(f"bitsandbytes {bnb.__version__} has no CPU backend")
    trunk = DecoderTrunk(pretrained=False, architecture=f"tiny_{family}", frozen_dtype="bfloat16",
                         quantization="nf4").eval()
    qkv = trunk.model.layers[0].get_submodule(trunk.family.qkv[0])
    assert isinstance(qkv, bnb.nn.Linear4bit)
    x = tokens()
    changed = x.clone()
    changed[:, SOURCE:] += 1.0
    mask = InformationEmitter()(SOURCE, DIAGNOSIS, dtype=torch.bfloat16)
    with torch.no_grad():
        a, b = trunk(x, mask), trunk(changed, mask)
    assert torch.isfinite(a).all() and max_error(a[:, :SOURCE], b[:, :SOURCE]) == 0
    with pytest.raises(RuntimeError, match="quantised"):
        trunk.fold_adapters()


# ---- refusals ----

@pytest.mark.parametrize("family", FAMILIES)
def test_flash_attention_is_refused_for_every_family(family: str) -> None:
    with pytest.raises(ConfigError, match="padding mask"):
        DecoderTrunk(pretrained=False, architecture=f"tiny_{family}", attn_implementation="flash_attention_2")


def test_gemma2_under_sdpa_is_refused_naming_eager_before_any_weight_is_read(saved) -> None:
    with pytest.raises(ConfigError, match=r"soft-capped.*choose eager"):
        load(saved, "gemma2", attn_implementation="sdpa")
    assert load(saved, "gemma2").attn_implementation == "eager"  # auto


def test_an_unsupported_family_is_refused_listing_the_supported_ones(tmp_path: Path) -> None:
    GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=32, n_positions=16)).save_pretrained(
        tmp_path / "gpt2")
    with pytest.raises(UnsupportedTrunkError) as err:
        LlamaTrunk(name_or_path=str(tmp_path / "gpt2"), frozen_dtype="float32")
    message = str(err.value)
    assert "'gpt2'" in message and "gpt2" in message.split(":")[0]
    assert all(f"({model_type})" in message for model_type in TRUNK_FAMILIES)
    with pytest.raises(UnsupportedTrunkError, match="text-only Gemma-3"):
        trunk_family("gemma3")


def test_a_sequence_longer_than_the_sliding_window_warns_once() -> None:
    trunk = DecoderTrunk(pretrained=False, architecture="tiny_mistral", frozen_dtype="float32").eval()
    assert trunk.sliding_window == 16
    long = torch.randn(1, 20, 64)
    with pytest.warns(UserWarning, match="sliding window of 16"), torch.no_grad():
        trunk(long, InformationEmitter()(16, 4))
    assert DecoderTrunk(pretrained=False, architecture="tiny_qwen2", frozen_dtype="float32").sliding_window is None


# ---- the whole model: predict's fold ----

@pytest.mark.parametrize("kind", ["repadapter", "lora"])
def test_phi3_pneumollm_folds_for_predict(kind: str) -> None:
    torch.manual_seed(0)
    net = build_model(compose_model_config(overrides=["llm.architecture=tiny_phi3", f"llm.adapter.kind={kind}"]))
    perturb_adapters(net.llm)
    net.eval()
    films = torch.rand(2, 1, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = net(films)
        notes = fold_for_inference(net)
        after = net(films)
    assert notes and "folded" in notes[0]
    assert max_error(before, after) <= FOLD_TOLERANCE


# ---- full-size architectures ----

# Parameter counts of the whole causal LMs as their hub pages publish them (safetensors totals).
PUBLISHED_TOTALS = {
    "llama7b": 6_738_415_616, "llama2_7b": 6_738_415_616, "llama3_8b": 8_030_261_248,
    "llama3_1_8b": 8_030_261_248, "mistral7b_v01": 7_241_732_096, "mistral7b_v03": 7_248_023_552,
    "qwen2_5_7b": 7_615_616_512, "qwen3_8b": 8_190_735_360, "gemma7b": 8_537_680_896, "gemma2_9b": 9_241_705_984,
    "gemma3_1b": 999_885_952, "phi3_mini_4k": 3_821_079_552, "biomistral7b": 7_241_732_096,
    "meditron7b": 6_738_415_616 + 2 * 17 * 4096,  # Llama-2-7B + 17 added tokens (embedding and LM head)
}


@pytest.mark.parametrize("name", FULL_SIZE_TRUNKS)
def test_full_size_architectures_have_the_published_parameter_counts(name: str) -> None:
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(trunk_config(**TRUNK_ARCHITECTURES[name]))
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED_TOTALS[name]


@pytest.mark.parametrize("name", FULL_SIZE_TRUNKS)
def test_full_size_trunks_build_on_meta_as_their_family(name: str) -> None:
    values = TRUNK_ARCHITECTURES[name]
    with torch.device("meta"):
        trunk = DecoderTrunk(pretrained=False, architecture=name, frozen_dtype="bfloat16")
    assert trunk.family is TRUNK_FAMILIES[values["model_type"]]
    assert trunk.model.config.model_type == values["model_type"] and len(trunk.model.layers) == \
        values["num_hidden_layers"]
    assert trunk.excluded_parameter_count == values["vocab_size"] * values["hidden_size"]
    assert {p.device.type for p in trunk.parameters()} == {"meta"}


def test_every_hub_checkpoint_names_a_built_in_architecture_of_a_supported_family() -> None:
    for name, checkpoint in TRUNK_CHECKPOINTS.items():
        assert checkpoint.architecture in TRUNK_ARCHITECTURES, name
        assert TRUNK_ARCHITECTURES[checkpoint.architecture]["model_type"] in TRUNK_FAMILIES, name


def test_trunk_sizes_and_memory_table() -> None:
    llama, phi3 = trunk_size("llama7b"), trunk_size("phi3_mini_4k")
    assert llama.frozen == 6_738_415_616 - 2 * 32000 * 4096  # LLaMA-7B without embedding and LM head
    assert llama.frozen_bytes["bf16"] == 2 * llama.frozen
    assert llama.frozen_bytes["nf4+dq"] < llama.frozen_bytes["nf4"] < llama.frozen_bytes["int8"] < \
        llama.frozen_bytes["bf16"]
    assert phi3.frozen == 3_821_079_552 - 2 * 32064 * 3072 and phi3.family == "Phi-3"
    assert phi3.lora == 32 * 8 * (3072 + 3 * 3072)  # one LoRA pair on the fused qkv_proj per layer
    table = trunk_memory_table(["llama7b", "gemma2_9b"])
    assert "| llama7b " in table and "google/gemma-2-9b" in table and "12.95" in table


def test_the_backbone_sizes_command_prints_the_trunk_and_encoder_tables(capsys: pytest.CaptureFixture) -> None:
    from pneumollm.cli.backbone_sizes import main

    assert main(["--trunks", "llama7b", "--encoders", "rad_dino"]) == 0
    out = capsys.readouterr().out
    assert "6,476,271,616" in out and "microsoft/rad-dino" in out
