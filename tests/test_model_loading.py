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
from pneumollm.models.components.pretrained import WeightsMismatchError, WeightsNotFoundError
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
    cfg = compose_model_config({"encoder": "full_clip_vit_l14", "llm": "full_llama7b"}, [
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


# ---- no silent misload: another architecture, or a checkpoint whose tensors do not match, is refused ----

def _edit_safetensors(folder: Path, edit) -> None:
    from safetensors.torch import load_file

    path = folder / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def _saved_clip_vision(folder: Path) -> Path:
    torch.manual_seed(11)
    CLIPVisionModel(tiny_clip_vision_config()).save_pretrained(folder)
    return folder


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_a_dinov2_folder_is_refused_by_the_clip_encoder_naming_its_type(tmp_path: Path) -> None:
    from transformers import Dinov2Config, Dinov2Model

    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                             image_size=56, patch_size=14)).save_pretrained(tmp_path / "rad-dino")
    with pytest.raises(WeightsMismatchError) as err:
        ClipVisionEncoder(name_or_path=str(tmp_path / "rad-dino"), pretrained=True, **FP32)
    message = _one_line(err)
    assert "rad-dino" in message and "'dinov2'" in message and "CLIP vision tower" in message


def test_a_clip_folder_missing_a_tensor_is_refused_naming_it(tmp_path: Path) -> None:
    folder = _saved_clip_vision(tmp_path / "clip")
    _edit_safetensors(folder, lambda t: t.pop("encoder.layers.1.mlp.fc1.weight"))
    with pytest.raises(WeightsMismatchError) as err:
        ClipVisionEncoder(name_or_path=str(folder), pretrained=True, **FP32)
    assert "1 missing" in _one_line(err) and "missing encoder.layers.1.mlp.fc1.weight" in str(err.value)


def test_a_clip_tensor_of_another_shape_is_refused_naming_both_shapes(tmp_path: Path) -> None:
    folder = _saved_clip_vision(tmp_path / "clip")
    _edit_safetensors(folder, lambda t: t.update({"encoder.layers.0.mlp.fc1.bias": torch.zeros(65)}))
    with pytest.raises(WeightsMismatchError) as err:
        ClipVisionEncoder(name_or_path=str(folder), pretrained=True, **FP32)
    assert "other shape encoder.layers.0.mlp.fc1.bias (checkpoint [65], model [64])" in _one_line(err)


def test_unexpected_tensors_are_refused_and_only_five_are_named(tmp_path: Path) -> None:
    folder = _saved_clip_vision(tmp_path / "clip")
    _edit_safetensors(folder, lambda t: t.update({f"extra.block{i}.weight": torch.zeros(2) for i in range(7)}))
    with pytest.raises(WeightsMismatchError) as err:
        ClipVisionEncoder(name_or_path=str(folder), pretrained=True, **FP32)
    message = _one_line(err)
    assert "7 unexpected" in message and message.count("unexpected extra.") == 5 and "and 2 more" in message


def test_a_llama_folder_missing_a_layer_tensor_is_refused(tmp_path: Path) -> None:
    LlamaForCausalLM(tiny_llama_config()).save_pretrained(tmp_path / "llama")
    _edit_safetensors(tmp_path / "llama", lambda t: t.pop("model.layers.1.self_attn.k_proj.weight"))
    with pytest.raises(WeightsMismatchError) as err:
        LlamaTrunk(name_or_path=str(tmp_path / "llama"), pretrained=True, **FP32)
    assert "missing layers.1.self_attn.k_proj.weight" in _one_line(err)


def test_a_trunk_checkpoint_without_token_embeddings_loads(tmp_path: Path) -> None:
    torch.manual_seed(11)
    saved = LlamaModel(tiny_llama_config()).eval()
    saved.save_pretrained(tmp_path / "llama")
    _edit_safetensors(tmp_path / "llama", lambda t: t.pop("embed_tokens.weight"))
    trunk = LlamaTrunk(name_or_path=str(tmp_path / "llama"), pretrained=True, **FP32).eval()
    tokens, mask = torch.randn(1, 10, 64), InformationEmitter()(6, 4)
    with torch.no_grad():
        expected = saved(inputs_embeds=tokens, attention_mask=mask).last_hidden_state
        torch.testing.assert_close(trunk(tokens, mask), expected)


def test_a_clip_folder_given_as_the_llm_is_refused(tmp_path: Path) -> None:
    folder = _saved_clip_vision(tmp_path / "clip")
    with pytest.raises(WeightsMismatchError) as err:
        LlamaTrunk(name_or_path=str(folder), pretrained=True, **FP32)
    assert "'clip_vision_model'" in _one_line(err) and "decoder-only LLM" in str(err.value)


def test_a_timm_checkpoint_missing_a_tensor_is_refused_in_one_line(tmp_path: Path) -> None:
    kwargs = {"embed_dim": 32, "depth": 2, "num_heads": 2}
    state = timm.create_model("vit_base_patch16_224.augreg_in21k", num_classes=0, **kwargs).state_dict()
    state.pop("blocks.1.attn.qkv.weight")
    state["blocks.0.mlp.fc1.bias"] = torch.zeros(65)
    (tmp_path / "vit").mkdir()
    save_file(state, tmp_path / "vit" / "model.safetensors")
    with pytest.raises(WeightsMismatchError) as err:
        TimmViTEncoder(model_name="vit_base_patch16_224.augreg_in21k", pretrained=True,
                       name_or_path=str(tmp_path / "vit"), model_kwargs=kwargs, **FP32)
    message = _one_line(err)
    assert "missing blocks.1.attn.qkv.weight" in message
    assert "other shape blocks.0.mlp.fc1.bias (checkpoint [65], model [128])" in message


def test_the_clip_arms_refuse_a_vision_only_folder(tmp_path: Path) -> None:
    from pneumollm.models.arms.clip_backbone import FrozenCLIP

    folder = _saved_clip_vision(tmp_path / "clip")
    with pytest.raises(WeightsMismatchError, match=r"'clip_vision_model'.*CLIP model"):
        FrozenCLIP(str(folder), tokenizer=str(folder))
