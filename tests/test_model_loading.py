"""Pretrained loading through the real code path: tiny random models saved with save_pretrained, loaded back."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from transformers import CLIPConfig, CLIPModel, CLIPVisionModel, LlamaForCausalLM, LlamaModel

from pneumollm.models.components.emitter import InformationEmitter
from pneumollm.models.components.encoders import ClipVisionEncoder, TimmViTEncoder
from pneumollm.models.components.llm import LlamaTrunk
from pneumollm.models.components.pretrained import WeightsNotFoundError
from pneumollm.models.param_count import build_model, compose_model_config
from pneumollm.models.tiny import TINY_CLIP_VISION, tiny_clip_vision_config, tiny_llama_config

FP32 = {"frozen_dtype": "float32"}


def films(batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, 1, 224, 224, generator=torch.Generator().manual_seed(0))


def cls_tokens(vision: torch.nn.Module, pixels: torch.Tensor, blocks: list[int]) -> torch.Tensor:
    states = vision(pixel_values=pixels, output_hidden_states=True).hidden_states
    return torch.stack([states[i][:, 0] for i in blocks], dim=1)


def test_clip_vision_tower_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(11)  # differs from the encoders' init_seed, so a match proves loading
    reference = CLIPVisionModel(tiny_clip_vision_config()).eval()
    reference.save_pretrained(tmp_path / "clip")
    encoder = ClipVisionEncoder(name_or_path=str(tmp_path / "clip"), pretrained=True, multiscale=2, **FP32).eval()
    x = films()
    with torch.no_grad():
        expected = cls_tokens(reference, encoder.normalize(x), [2, 4, 6])
        got = encoder(x)
    assert got.shape == (2, 3, 32)
    torch.testing.assert_close(got, expected)  # RepAdapters start as the identity


def test_full_clip_checkpoint_loads_its_vision_tower(tmp_path: Path) -> None:
    torch.manual_seed(11)  # differs from the encoders' init_seed, so a match proves loading
    text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
            "vocab_size": 64}
    full = CLIPModel(CLIPConfig(vision_config=TINY_CLIP_VISION, text_config=text, projection_dim=32)).eval()
    full.save_pretrained(tmp_path / "clip_full")
    encoder = ClipVisionEncoder(name_or_path=str(tmp_path / "clip_full"), pretrained=True, multiscale=3,
                                adapter={"enabled": False}, **FP32).eval()
    x = films()
    with torch.no_grad():
        torch.testing.assert_close(encoder(x), cls_tokens(full.vision_model, encoder.normalize(x), [3, 6]))


@pytest.mark.parametrize("saved_class", [LlamaForCausalLM, LlamaModel])
def test_llama_round_trip(tmp_path: Path, saved_class: type) -> None:
    torch.manual_seed(11)  # differs from the encoders' init_seed, so a match proves loading
    saved = saved_class(tiny_llama_config()).eval()
    saved.save_pretrained(tmp_path / "llama")
    reference = saved.model if saved_class is LlamaForCausalLM else saved
    trunk = LlamaTrunk(name_or_path=str(tmp_path / "llama"), pretrained=True, **FP32).eval()
    assert trunk.model.embed_tokens is None and trunk.excluded_parameter_count == 32 * 64
    tokens = torch.randn(2, 10, 64)
    mask = InformationEmitter()(6, 4)
    with torch.no_grad():
        expected = reference(inputs_embeds=tokens, attention_mask=mask).last_hidden_state
        torch.testing.assert_close(trunk(tokens, mask), expected)


def test_whole_model_from_local_folders_through_hydra(tmp_path: Path) -> None:
    torch.manual_seed(11)  # differs from the encoders' init_seed, so a match proves loading
    CLIPVisionModel(tiny_clip_vision_config()).save_pretrained(tmp_path / "clip")
    LlamaForCausalLM(tiny_llama_config()).save_pretrained(tmp_path / "llama")
    cfg = compose_model_config({"encoder": "clip_vit_l14", "llm": "llama7b"}, [
        f"encoder.name_or_path={tmp_path / 'clip'}", "encoder.multiscale=1", "encoder.frozen_dtype=float32",
        f"llm.name_or_path={tmp_path / 'llama'}", "llm.frozen_dtype=float32",
    ])
    model = build_model(cfg)
    assert model.encoder.width == 32 and model.llm.hidden_size == 64
    assert model(films()).shape == (2, 2)


def test_timm_vit_round_trip_from_a_local_folder(tmp_path: Path) -> None:
    kwargs = {"embed_dim": 32, "depth": 4, "num_heads": 2, "num_classes": 0}
    torch.manual_seed(11)  # differs from the encoders' init_seed, so a match proves loading
    reference = timm.create_model("vit_base_patch16_224.augreg_in21k", **kwargs).eval()
    (tmp_path / "vit").mkdir()
    save_file(reference.state_dict(), tmp_path / "vit" / "model.safetensors")
    encoder = TimmViTEncoder(model_name="vit_base_patch16_224.augreg_in21k", pretrained=True,
                             name_or_path=str(tmp_path / "vit"), multiscale=2,
                             model_kwargs={k: v for k, v in kwargs.items() if k != "num_classes"}, **FP32).eval()
    x = films()
    with torch.no_grad():
        hidden = reference.norm_pre(reference._pos_embed(reference.patch_embed(encoder.normalize(x))))
        expected = []
        for i, block in enumerate(reference.blocks, start=1):
            hidden = block(hidden)
            if i % 2 == 0:
                expected.append(hidden[:, 0])
        torch.testing.assert_close(encoder(x), torch.stack(expected, dim=1))


def test_missing_local_folder_gives_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_weights"
    with pytest.raises(WeightsNotFoundError, match="no_such_weights"):
        ClipVisionEncoder(name_or_path=str(missing), pretrained=True, **FP32)
    with pytest.raises(WeightsNotFoundError, match="no_such_weights"):
        LlamaTrunk(name_or_path=str(missing), pretrained=True, **FP32)
    with pytest.raises(WeightsNotFoundError, match="no_such_weights"):
        TimmViTEncoder(pretrained=True, name_or_path=str(missing), **FP32)


def test_uncached_hub_id_fails_fast_offline() -> None:
    with pytest.raises(WeightsNotFoundError, match="HF_HUB_OFFLINE"):
        LlamaTrunk(name_or_path="no-such-org/no-such-llama", pretrained=True, **FP32)


def test_folder_without_weights_is_named_in_the_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsNotFoundError, match="empty"):
        TimmViTEncoder(pretrained=True, name_or_path=str(tmp_path / "empty"), **FP32)
