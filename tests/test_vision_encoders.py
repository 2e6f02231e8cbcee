"""Vision encoders beyond the paper's (issue 25): DINOv2 / RAD-DINO and SigLIP through ``HFVisionEncoder``,
BiomedCLIP's open_clip folder through ``TimmViTEncoder``, the token rule for any depth, input statistics, folding
and the frozen-prefix cache. Tiny random models saved into ``tmp_path`` stand in for the hub's weights."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from transformers import Dinov2Config, Dinov2Model, SiglipConfig, SiglipModel, SiglipVisionConfig, SiglipVisionModel

from pneumollm.models.base import NORMALIZATION_STATS, module_settings
from pneumollm.models.components.adapters import AdaptedNorm
from pneumollm.models.components.encoders import ClipVisionEncoder, HFVisionEncoder, TimmViTEncoder
from pneumollm.models.components.hf_vision import DINOV2_VIT_B14, SIGLIP_SO400M_14_384
from pneumollm.models.components.llm import NoTrunk
from pneumollm.models.components.pretrained import WeightsMismatchError
from pneumollm.models.components.vision_tokens import evenly_spaced_blocks, multiscale_indices, token_blocks
from pneumollm.models.pneumollm import PneumoLLM
from pneumollm.models.tiny import TINY_DINOV2, TINY_SIGLIP_VISION, TINY_TIMM_VIT
from pneumollm.models.vision_backbones import (
    VISION_BACKBONES,
    backbone_sizes,
    build_encoder,
    encoder_config,
    markdown_table,
)
from pneumollm.training.prefix_cache import plan_prefix_cache, prefix_key
from tests.helpers import REPO_ROOT, markdown_rows

FP32 = {"frozen_dtype": "float32"}
FOLD_TOLERANCE = 1e-5  # folded vs unfolded, fp32
RAD_DINO_STATS = {"image_mean": [0.5307, 0.5307, 0.5307], "image_std": [0.2583, 0.2583, 0.2583]}
# position tables for 112 px: fed 224 px films, the encoders must interpolate them as the models themselves do
DINOV2_112 = {**TINY_DINOV2, "image_size": 112}
SIGLIP_112 = {**TINY_SIGLIP_VISION, "image_size": 112}


def films(batch: int = 2, size: int = 224) -> torch.Tensor:
    return torch.rand(batch, 1, size, size, generator=torch.Generator().manual_seed(0))


def run_blocks(embedded: torch.Tensor, layers) -> list[torch.Tensor]:
    """The residual stream after each block, computed block by block (not through output_hidden_states)."""
    states, hidden = [], embedded
    for layer in layers:
        out = layer(hidden, None)
        hidden = out[0] if isinstance(out, tuple) else out
        states.append(hidden)
    return states


def dinov2_tokens(model: Dinov2Model, pixels: torch.Tensor, blocks: list[int], token: str = "cls") -> torch.Tensor:
    states = run_blocks(model.embeddings(pixels), model.encoder.layer)
    pick = (lambda s: s[:, 0]) if token == "cls" else (lambda s: s[:, 1:].mean(dim=1))  # patches: CLS left out
    return torch.stack([pick(states[b - 1]) for b in blocks], dim=1)


def siglip_patch_mean(model: SiglipVisionModel, pixels: torch.Tensor, blocks: list[int]) -> torch.Tensor:
    tower = getattr(model, "vision_model", model)
    states = run_blocks(tower.embeddings(pixels, interpolate_pos_encoding=True), tower.encoder.layers)
    return torch.stack([states[b - 1].mean(dim=1) for b in blocks], dim=1)


def save_dinov2(folder: Path, preprocessor: dict | None = None, seed: int = 11) -> Dinov2Model:
    torch.manual_seed(seed)  # differs from the encoders' init_seed, so a match proves loading
    model = Dinov2Model(Dinov2Config(**DINOV2_112)).eval()
    model.save_pretrained(folder)
    if preprocessor is not None:
        (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    return model


def randomise_adapters(encoder: torch.nn.Module) -> None:
    """Non-zero adapter weights (the up-projections start at zero, i.e. the identity)."""
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for param in encoder.parameters():
            if param.requires_grad:
                param.copy_(0.2 * torch.randn(param.shape, generator=generator))


def fold_error(encoder: torch.nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """(max |folded - unfolded|, max |unfolded - identity adapters|) of an encoder with randomised adapters."""
    encoder.eval()
    with torch.no_grad():
        plain = encoder(x)
        randomise_adapters(encoder)
        unfolded = encoder(x)
        folded_count = encoder.fold_adapters()
        folded = encoder(x)
    assert folded_count == len(list(encoder.adapter_sites()))
    assert not any(isinstance(m, AdaptedNorm) for m in encoder.modules())
    return (folded - unfolded).abs().max().item(), (unfolded - plain).abs().max().item()


# ---- the token rule ----

@pytest.mark.parametrize(("depth", "blocks"), [
    (12, [2, 4, 6, 8, 10, 12]), (24, [4, 8, 12, 16, 20, 24]), (27, [5, 9, 14, 18, 23, 27]),
    (32, [5, 11, 16, 21, 27, 32]),
])
def test_six_evenly_spaced_blocks_at_each_depth(depth: int, blocks: list[int]) -> None:
    assert evenly_spaced_blocks(depth, 6) == blocks
    assert token_blocks(depth, num_tokens=6) == blocks


@pytest.mark.parametrize("depth", [12, 24, 27, 32])
def test_the_rule_for_every_token_count(depth: int) -> None:
    for n in range(1, depth + 1):
        blocks = evenly_spaced_blocks(depth, n)
        assert len(blocks) == n and blocks[-1] == depth and all(a < b for a, b in itertools.pairwise(blocks))
        assert blocks == [int(k * depth / n + 0.5) for k in range(1, n + 1)]  # round half up
        if depth % n == 0:  # an exact step: the same blocks as multiscale
            assert blocks == multiscale_indices(depth, depth // n)
    with pytest.raises(ValueError, match="between 1 and the number of blocks"):
        evenly_spaced_blocks(depth, depth + 1)


def test_multiscale_and_num_tokens_together_must_agree() -> None:
    assert token_blocks(24, multiscale=4, num_tokens=6) == [4, 8, 12, 16, 20, 24]
    with pytest.raises(ValueError, match=r"disagree.*set one of them to null"):
        token_blocks(24, multiscale=2, num_tokens=6)
    with pytest.raises(ValueError, match="set multiscale"):
        token_blocks(24)


def test_the_paper_clip_default_still_takes_blocks_4_to_24() -> None:
    with torch.device("meta"):
        encoder = ClipVisionEncoder(pretrained=False)
        by_count = ClipVisionEncoder(pretrained=False, multiscale=None, num_tokens=6)
    assert encoder.block_indices == by_count.block_indices == [4, 8, 12, 16, 20, 24]


# ---- DINOv2 / RAD-DINO ----

def test_dinov2_folder_gives_the_cls_tokens_of_the_chosen_blocks(tmp_path: Path) -> None:
    reference = save_dinov2(tmp_path / "rad-dino", RAD_DINO_STATS)
    encoder = HFVisionEncoder(family="dinov2", name_or_path=str(tmp_path / "rad-dino"), num_tokens=3, **FP32).eval()
    assert encoder.block_indices == [2, 4, 6] and encoder.token == "cls"
    torch.testing.assert_close(encoder.normalize.mean.flatten(), torch.tensor([0.5307] * 3))  # the folder's own
    assert encoder.normalization_source == "preprocessor_config.json"
    x = films()
    with torch.no_grad():
        got = encoder(x)  # RepAdapters on, at their identity initialisation
        expected = dinov2_tokens(reference, encoder.normalize(x), [2, 4, 6])  # 224 px: position table interpolated
    assert got.shape == (2, 3, 32) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    patch_mean = HFVisionEncoder(family="dinov2", name_or_path=str(tmp_path / "rad-dino"), num_tokens=3,
                                 token="patch_mean", **FP32).eval()
    with torch.no_grad():
        torch.testing.assert_close(patch_mean(x), dinov2_tokens(reference, encoder.normalize(x), [2, 4, 6], "patch"),
                                   rtol=0, atol=1e-5)


def test_dinov2_in_the_hubs_older_layout_loads(tmp_path: Path) -> None:
    """microsoft/rad-dino and facebook/dinov2-* were saved by transformers 4: attention.attention.query etc."""
    reference = save_dinov2(tmp_path / "old")
    renames = {"attention.q_proj": "attention.attention.query", "attention.k_proj": "attention.attention.key",
               "attention.v_proj": "attention.attention.value", "attention.o_proj": "attention.output.dense"}
    tensors = load_file(tmp_path / "old" / "model.safetensors")
    for new, old in renames.items():
        tensors = {k.replace(new, old): v for k, v in tensors.items()}
    assert any("attention.attention.query" in k for k in tensors)
    save_file(tensors, tmp_path / "old" / "model.safetensors", metadata={"format": "pt"})
    encoder = HFVisionEncoder(family="dinov2", name_or_path=str(tmp_path / "old"), num_tokens=2,
                              adapter={"enabled": False}, **FP32).eval()
    assert encoder.normalization_source == "built-in default (imagenet)"
    with torch.no_grad():
        torch.testing.assert_close(encoder(films()), dinov2_tokens(reference, encoder.normalize(films()), [3, 6]),
                                   rtol=0, atol=1e-5)


def test_a_dinov2_folder_missing_a_tensor_or_of_another_type_is_refused(tmp_path: Path) -> None:
    save_dinov2(tmp_path / "dino")
    tensors = load_file(tmp_path / "dino" / "model.safetensors")
    tensors.pop("encoder.layer.2.mlp.fc1.weight")
    save_file(tensors, tmp_path / "dino" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(WeightsMismatchError, match=r"missing encoder.layer.2.mlp.fc1.weight"):
        HFVisionEncoder(family="dinov2", name_or_path=str(tmp_path / "dino"), **FP32)
    SiglipVisionModel(SiglipVisionConfig(**SIGLIP_112)).save_pretrained(tmp_path / "siglip")
    with pytest.raises(WeightsMismatchError, match=r"'siglip_vision_model'.*DINOv2 vision tower"):
        HFVisionEncoder(family="dinov2", name_or_path=str(tmp_path / "siglip"), **FP32)


def test_dinov2_without_stochastic_layers_even_if_the_checkpoint_has_them(tmp_path: Path) -> None:
    torch.manual_seed(11)
    Dinov2Model(Dinov2Config(**DINOV2_112, drop_path_rate=0.3)).save_pretrained(tmp_path / "dino")
    encoder = HFVisionEncoder(family="dinov2", name_or_path=str(tmp_path / "dino"), **FP32)
    assert encoder.model.config.drop_path_rate == 0.0
    encoder.train()
    with torch.no_grad():
        torch.testing.assert_close(encoder(films()), encoder(films()), rtol=0, atol=0)  # frozen tower: no randomness


# ---- SigLIP ----

def test_siglip_tokens_are_the_mean_of_the_patch_tokens(tmp_path: Path) -> None:
    torch.manual_seed(11)
    reference = SiglipVisionModel(SiglipVisionConfig(**SIGLIP_112)).eval()
    reference.save_pretrained(tmp_path / "siglip")
    encoder = HFVisionEncoder(family="siglip", name_or_path=str(tmp_path / "siglip"), num_tokens=3, **FP32).eval()
    assert encoder.token == "patch_mean" and encoder.block_indices == [2, 4, 6]
    assert "head" not in dict(encoder.model.named_children())  # the unused attention-pool head is not built
    torch.testing.assert_close(encoder.normalize.mean.flatten(), torch.tensor(NORMALIZATION_STATS["siglip"][0]))
    x = films()
    with torch.no_grad():
        got = encoder(x)
        expected = siglip_patch_mean(reference, encoder.normalize(x), [2, 4, 6])
    assert got.shape == (2, 3, 32)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="no CLS token; use token: patch_mean"):
        HFVisionEncoder(family="siglip", name_or_path=str(tmp_path / "siglip"), token="cls", **FP32)


def test_a_whole_siglip_checkpoint_loads_its_vision_tower_only(tmp_path: Path) -> None:
    torch.manual_seed(11)
    text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
            "vocab_size": 64, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    full = SiglipModel(SiglipConfig(vision_config=SIGLIP_112, text_config=text)).eval()
    full.save_pretrained(tmp_path / "siglip_full")
    encoder = HFVisionEncoder(family="siglip", name_or_path=str(tmp_path / "siglip_full"), num_tokens=2,
                              adapter={"enabled": False}, **FP32).eval()
    with torch.no_grad():
        expected = siglip_patch_mean(full.vision_model, encoder.normalize(films()), [3, 6])
        torch.testing.assert_close(encoder(films()), expected, rtol=0, atol=1e-5)


# ---- BiomedCLIP: an open_clip folder whose image tower is a timm ViT ----

def save_open_clip(folder: Path, edit=None, model_name: str = "vit_base_patch16_224") -> torch.nn.Module:
    torch.manual_seed(11)
    trunk = timm.create_model("vit_base_patch16_224", num_classes=0, **TINY_TIMM_VIT).eval()
    state = {f"visual.trunk.{k}": v for k, v in trunk.state_dict().items()}
    state.update({"visual.head.proj.weight": torch.randn(16, 32), "logit_scale": torch.tensor(4.6),
                  "text.transformer.embeddings.word_embeddings.weight": torch.randn(64, 32),
                  "text.proj.0.weight": torch.randn(16, 32)})
    if edit is not None:
        edit(state)
    folder.mkdir()
    torch.save(state, folder / "open_clip_pytorch_model.bin")
    config = {"model_cfg": {"embed_dim": 16, "vision_cfg": {"timm_model_name": model_name, "image_size": 224}},
              "preprocess_cfg": dict(zip(("mean", "std"), map(list, NORMALIZATION_STATS["clip"]), strict=True))}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    return trunk


def open_clip_encoder(folder: Path, **kwargs) -> TimmViTEncoder:
    settings = {"model_name": None, "pretrained": True, "name_or_path": str(folder), "multiscale": None,
                "num_tokens": 3, "model_kwargs": TINY_TIMM_VIT, **FP32, **kwargs}
    return TimmViTEncoder(**settings)


def timm_block_tokens(model: torch.nn.Module, pixels: torch.Tensor, blocks: list[int], token: str) -> torch.Tensor:
    hidden = model.norm_pre(model._pos_embed(model.patch_embed(pixels)))
    out = []
    for i, block in enumerate(model.blocks, start=1):
        hidden = block(hidden)
        if i in blocks:
            out.append(hidden[:, 0] if token == "cls" else hidden[:, model.num_prefix_tokens:].mean(dim=1))
    return torch.stack(out, dim=1)


def test_an_open_clip_folder_loads_its_timm_image_tower(tmp_path: Path) -> None:
    trunk = save_open_clip(tmp_path / "biomedclip")
    encoder = open_clip_encoder(tmp_path / "biomedclip").eval()
    assert encoder.model_name == "vit_base_patch16_224" and encoder.block_indices == [2, 4, 6]
    assert encoder.normalization_source == "open_clip_config.json"
    torch.testing.assert_close(encoder.normalize.std.flatten(), torch.tensor(NORMALIZATION_STATS["clip"][1]))
    x = films()
    with torch.no_grad():
        torch.testing.assert_close(encoder(x), timm_block_tokens(trunk, encoder.normalize(x), [2, 4, 6], "cls"),
                                   rtol=0, atol=1e-5)
        mean = open_clip_encoder(tmp_path / "biomedclip", token="patch_mean").eval()
        torch.testing.assert_close(mean(x), timm_block_tokens(trunk, mean.normalize(x), [2, 4, 6], "patch_mean"),
                                   rtol=0, atol=1e-5)


def test_an_open_clip_folder_missing_a_visual_tensor_or_holding_a_stranger_is_refused(tmp_path: Path) -> None:
    save_open_clip(tmp_path / "missing", edit=lambda s: s.pop("visual.trunk.blocks.3.attn.qkv.weight"))
    with pytest.raises(WeightsMismatchError, match=r"1 missing.*missing blocks.3.attn.qkv.weight"):
        open_clip_encoder(tmp_path / "missing")
    save_open_clip(tmp_path / "stranger", edit=lambda s: s.update({"visual.extra.weight": torch.zeros(2)}))
    with pytest.raises(WeightsMismatchError, match=r"1 unexpected.*unexpected visual.extra.weight"):
        open_clip_encoder(tmp_path / "stranger")
    save_open_clip(tmp_path / "other", model_name="vit_large_patch16_224")
    with pytest.raises(WeightsMismatchError, match="'vit_large_patch16_224', not 'vit_base_patch16_224'"):
        open_clip_encoder(tmp_path / "other", model_name="vit_base_patch16_224")


def test_a_timm_vit_without_class_token_takes_the_patch_mean() -> None:
    kwargs = {**TINY_TIMM_VIT, "class_token": False, "global_pool": "avg"}
    encoder = TimmViTEncoder(model_name="vit_base_patch16_224", multiscale=None, num_tokens=2, token="patch_mean",
                             model_kwargs=kwargs, **FP32).eval()
    x = films()
    with torch.no_grad():
        expected = timm_block_tokens(encoder.model, encoder.normalize(x), [3, 6], "patch_mean")
        torch.testing.assert_close(encoder(x), expected, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="no CLS token"):
        TimmViTEncoder(model_name="vit_base_patch16_224", model_kwargs=kwargs, **FP32)


# ---- adapters fold exactly; the frozen-prefix cache ----

@pytest.mark.parametrize("name", ["clip_vit_l14", "rad_dino", "siglip_b16_224", "biomedclip_b16"])
def test_adapters_fold_exactly_in_every_family(name: str) -> None:
    encoder = build_encoder(encoder_config(name, pretrained=False, size="tiny"))
    assert encoder(films(1)).shape == (1, 6, 32)
    folded_vs_unfolded, adapter_effect = fold_error(encoder, films())
    assert adapter_effect > 1e-3  # the randomised adapters change the tokens...
    assert folded_vs_unfolded < FOLD_TOLERANCE  # ...and folding keeps that change


@pytest.mark.parametrize("family", ["dinov2", "siglip"])
def test_checkpointed_bf16_towers_train_their_adapters_and_return_float32(family: str) -> None:
    encoder = HFVisionEncoder(family=family, pretrained=False, architecture="tiny", frozen_dtype="bfloat16",
                              gradient_checkpointing=True).train()
    calls = []
    first_mlp = next(m for n, m in encoder.named_modules() if n.endswith(("layers.0.mlp", "layer.0.mlp")))
    first_mlp.register_forward_pre_hook(lambda *_: calls.append(1))
    tokens = encoder(films())
    assert tokens.dtype == torch.float32 and encoder.frozen_dtype == torch.bfloat16
    tokens.square().mean().backward()
    assert len(calls) == 2  # the block ran again in the backward pass
    adapters = [p for p in encoder.parameters() if p.requires_grad]
    assert len(adapters) == 6 * 4 and all(p.grad is not None and p.dtype == torch.float32 for p in adapters)
    assert any(p.grad.abs().sum() > 0 for p in adapters)


def _key(encoder: torch.nn.Module) -> str:
    from pneumollm.models.base import FrozenPrefix

    prefix = FrozenPrefix(encoder, module_settings(encoder))
    return prefix_key(prefix, device=torch.device("cpu"), precision="32-true", extra={"preprocessing": "p"})


def test_the_prefix_cache_key_follows_weights_and_settings() -> None:
    def encoder(**kw) -> HFVisionEncoder:
        settings = {"family": "dinov2", "pretrained": False, "architecture": "tiny", "adapter": {"enabled": False},
                    **FP32, **kw}
        return HFVisionEncoder(**settings)

    base = _key(encoder())
    assert _key(encoder()) == base
    assert _key(encoder(init_seed=1)) != base  # other weights
    assert _key(encoder(num_tokens=3)) != base  # other blocks
    assert _key(encoder(token="patch_mean")) != base
    assert _key(encoder(normalization="clip")) != base
    assert _key(encoder(family="siglip")) != base


def test_a_frozen_encoder_without_adapters_is_cacheable_and_with_adapters_is_not() -> None:
    for name in ("rad_dino", "siglip_b16_224", "biomedclip_b16"):
        cfg = encoder_config(name, pretrained=False, size="tiny")
        frozen = PneumoLLM(build_encoder({**cfg, "adapter": {"enabled": False}}), NoTrunk(hidden_size=16))
        assert plan_prefix_cache(frozen, "auto") is not None, name
        adapted = PneumoLLM(build_encoder(cfg), NoTrunk(hidden_size=16))
        assert plan_prefix_cache(adapted, "auto") is None, name


# ---- the catalogue and its full-size counts ----

def test_every_backbone_has_a_tiny_stand_in_that_runs() -> None:
    for name in VISION_BACKBONES:
        encoder = build_encoder(encoder_config(name, pretrained=False, size="tiny")).eval()
        with torch.no_grad():
            assert encoder(films(1)).shape == (1, 6, encoder.width), name
        pretrained = encoder_config(name)
        assert pretrained["pretrained"] and pretrained["name_or_path"] == VISION_BACKBONES[name].hub_id


def test_full_size_counts_on_the_meta_device() -> None:
    with torch.device("meta"):
        plain_dinov2 = Dinov2Model(Dinov2Config(**DINOV2_VIT_B14))
        plain_so400m = SiglipVisionModel(SiglipVisionConfig(**SIGLIP_SO400M_14_384, vision_use_head=False))
    rad_dino = backbone_sizes("rad_dino")
    assert (rad_dino.blocks, rad_dino.width, rad_dino.block_indices) == (12, 768, [2, 4, 6, 8, 10, 12])
    assert rad_dino.frozen == sum(p.numel() for p in plain_dinov2.parameters()) == 86_580_480
    assert rad_dino.adapters == 12 * (13 * 768 + 8)  # RepAdapter: D 768x8 + 8, U 2 groups 4x384 each + 768
    assert rad_dino.pretraining_size == 518 and rad_dino.patches_at_224 == 256
    so400m = backbone_sizes("siglip_so400m_14_384")
    assert so400m.block_indices == [5, 9, 14, 18, 23, 27] and so400m.token == "patch_mean"
    assert so400m.frozen == sum(p.numel() for p in plain_so400m.parameters()) == 412_987_248
    assert so400m.adapters == 27 * (13 * 1152 + 8)


@pytest.mark.slow
def test_full_size_counts_match_the_plain_models_and_the_docs() -> None:
    with torch.device("meta"):
        timm_b16 = timm.create_model("vit_base_patch16_224", num_classes=0)
    assert backbone_sizes("biomedclip_b16").frozen == sum(p.numel() for p in timm_b16.parameters()) == 85_798_656
    assert backbone_sizes("clip_vit_l14").frozen == 303_179_776  # docs/model.md's CLIP vision tower
    assert backbone_sizes("dinov2_vitl14").frozen == 304_368_640
    assert backbone_sizes("siglip_b16_224").frozen == 85_797_120
    documented = markdown_rows((REPO_ROOT / "docs" / "backbones.md").read_text())
    printed = markdown_rows(markdown_table())
    assert printed[0][0] == "name" and printed[1:] and all(row in documented for row in printed)
