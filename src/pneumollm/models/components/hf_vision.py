"""The Hugging Face vision towers an ``HFVisionEncoder`` can hold, one table row per model type.

Each ``HFVisionFamily`` says which transformers class and checkpoints (``model_type``) it takes, where its blocks
are, which norm feeds each block's q/k/v (where the RepAdapter goes), what its token is (CLS, or the mean of the
patch tokens for towers without one), its default input statistics, what a checkpoint may hold that the tower
leaves out, and its built-in architectures (full size for counts and offline builds, tiny for the CPU).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    Dinov2Config,
    Dinov2Model,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from pneumollm.models.components.adapters import HF_QKV
from pneumollm.models.components.pretrained import CLIP_TEXT_TOWER
from pneumollm.models.tiny import TINY_CLIP_VISION, TINY_DINOV2, TINY_SIGLIP_VISION

# CLIP ViT-L/14 vision tower at 224 px (openai/clip-vit-large-patch14), for builds without weights.
CLIP_VIT_L14_VISION: dict[str, Any] = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "num_channels": 3,
    "image_size": 224,
    "patch_size": 14,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "projection_dim": 768,
}
CLIP_ARCHITECTURES: dict[str, dict[str, Any]] = {"vit_l14": CLIP_VIT_L14_VISION, "tiny": TINY_CLIP_VISION}

# DINOv2 ViT-B/14 as in facebook/dinov2-base's config.json (518 px position table, 37 x 37 patches);
# microsoft/rad-dino (RAD-DINO) has the same architecture.
DINOV2_VIT_B14: dict[str, Any] = {
    "hidden_size": 768,
    "mlp_ratio": 4,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_channels": 3,
    "image_size": 518,
    "patch_size": 14,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-6,
    "layerscale_value": 1.0,
    "qkv_bias": True,
    "use_swiglu_ffn": False,
}
DINOV2_VIT_L14: dict[str, Any] = {**DINOV2_VIT_B14, "hidden_size": 1024, "num_hidden_layers": 24,
                                  "num_attention_heads": 16}
DINOV2_ARCHITECTURES: dict[str, dict[str, Any]] = {"rad_dino": DINOV2_VIT_B14, "vit_b14": DINOV2_VIT_B14,
                                                   "vit_l14": DINOV2_VIT_L14, "tiny": TINY_DINOV2}

# SigLIP vision towers (google/siglip-base-patch16-224, google/siglip-so400m-patch14-384).
SIGLIP_B16_224: dict[str, Any] = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_channels": 3,
    "image_size": 224,
    "patch_size": 16,
    "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-6,
}
SIGLIP_SO400M_14_384: dict[str, Any] = {**SIGLIP_B16_224, "hidden_size": 1152, "intermediate_size": 4304,
                                        "num_hidden_layers": 27, "num_attention_heads": 16, "image_size": 384,
                                        "patch_size": 14}
SIGLIP_ARCHITECTURES: dict[str, dict[str, Any]] = {"b16_224": SIGLIP_B16_224, "so400m_14_384": SIGLIP_SO400M_14_384,
                                                   "tiny": TINY_SIGLIP_VISION}


@dataclass(frozen=True)
class HFVisionFamily:
    """How to hold one model type of Hugging Face vision tower (see the module docstring).

    ``layers``: the path of the block list (from the tower; a ``vision_model`` wrapper is looked through);
    ``norm``: the norm in each block whose output feeds q, k and v; ``qkv``: candidate paths of those three
    projections in the block (the first that exists is used: transformers renamed DINOv2's within 5.x);
    ``num_prefix_tokens``: positions before the patches (CLS); ``token``: ``cls`` or ``patch_mean``;
    ``normalization``: the default statistics (a key of ``NORMALIZATION_STATS``); ``unused``: regexes of
    checkpoint tensors the tower leaves out (other towers, heads it does not build); ``frozen_config``: config
    values forced on every build and load (no pooling head it never uses, no stochastic depth or dropout in a
    frozen tower); ``interpolates``: the forward takes ``interpolate_pos_encoding`` (DINOv2 always interpolates).
    """

    name: str
    what: str
    model_class: Any
    config_class: Any
    model_types: frozenset[str]
    layers: str
    norm: str
    qkv: tuple[tuple[str, ...], ...]
    num_prefix_tokens: int
    token: str
    normalization: str
    architectures: Mapping[str, Mapping[str, Any]]
    default_architecture: str
    unused: tuple[str, ...] = ()
    frozen_config: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    interpolates: bool = True


HF_VISION_FAMILIES: dict[str, HFVisionFamily] = {
    "clip": HFVisionFamily(
        name="clip", what="CLIP vision tower", model_class=CLIPVisionModel, config_class=CLIPVisionConfig,
        model_types=frozenset({"clip", "clip_vision_model"}), layers="encoder.layers", norm="layer_norm1",
        qkv=(HF_QKV,), num_prefix_tokens=1, token="cls", normalization="clip", architectures=CLIP_ARCHITECTURES,
        default_architecture="vit_l14", unused=(CLIP_TEXT_TOWER,)),
    "dinov2": HFVisionFamily(
        name="dinov2", what="DINOv2 vision tower", model_class=Dinov2Model, config_class=Dinov2Config,
        model_types=frozenset({"dinov2"}), layers="encoder.layer", norm="norm1",
        qkv=(("attention.q_proj", "attention.k_proj", "attention.v_proj"),
             ("attention.attention.query", "attention.attention.key", "attention.attention.value")),
        num_prefix_tokens=1, token="cls", normalization="imagenet", architectures=DINOV2_ARCHITECTURES,
        default_architecture="vit_b14",
        frozen_config=MappingProxyType({"drop_path_rate": 0.0, "hidden_dropout_prob": 0.0,
                                        "attention_probs_dropout_prob": 0.0}),
        interpolates=False),
    "siglip": HFVisionFamily(
        name="siglip", what="SigLIP vision tower", model_class=SiglipVisionModel, config_class=SiglipVisionConfig,
        model_types=frozenset({"siglip", "siglip_vision_model"}), layers="encoder.layers", norm="layer_norm1",
        qkv=(HF_QKV,), num_prefix_tokens=0, token="patch_mean", normalization="siglip",
        architectures=SIGLIP_ARCHITECTURES, default_architecture="b16_224",
        unused=(r"^text_model\.", r"^logit_(scale|bias)$", r"^head\."),  # text tower; the attention-pool head
        frozen_config=MappingProxyType({"vision_use_head": False})),
}


def hf_vision_family(name: str) -> HFVisionFamily:
    """The table row called ``name``, or a ``ValueError`` listing the known ones."""
    if name not in HF_VISION_FAMILIES:
        raise ValueError(f"unknown vision family {name!r}; choose one of {sorted(HF_VISION_FAMILIES)}")
    return HF_VISION_FAMILIES[name]
