"""Tiny stand-ins for the paper's backbones (same architecture families, CPU-sized, randomly initialised).

Used by ``encoder=tiny_clip`` and ``llm=tiny_llama`` for tests, ``make demo`` and CPU smoke runs.
Sizes were chosen so that one training step of the whole tiny PneumoLLM (batch 16, 224x224,
forward + backward) takes about 0.2 s on 2 CPU threads (measurements in docs/model.md):

- CLIP vision tower: width 32, 6 blocks, 2 heads, MLP 64, patch 28 (8x8 = 64 patches + CLS).
  Patch 28 instead of 14 quarters the token count; with patch 14 (256 patches) a step costs several
  times more. Multiscale 1 takes the CLS token after each of the 6 blocks, so d = 6 as in the paper.
- DINOv2 / SigLIP vision towers and a timm ViT of the same size (``TINY_DINOV2``, ``TINY_SIGLIP_VISION``,
  ``TINY_TIMM_VIT``), stand-ins for RAD-DINO / DINOv2, SigLIP and BiomedCLIP.
- Llama decoder: width 64, 2 layers, 2 heads, MLP 128, a 32-token vocabulary (the token embeddings are
  unused: the trunk is fed ``inputs_embeds``).
- One decoder per other trunk family (``TINY_TRUNKS``, ``architecture: tiny_<family>``): width 64, 2 layers,
  MLP 128, 4 query heads sharing 2 key/value heads (grouped-query attention, as the full-size models have;
  Gemma: 2 query heads of width 32 sharing 1 key/value head, as gemma-2b does), each family's own extras on
  (Qwen2's q/k/v biases, Qwen3's and Gemma-3's q/k norms, Gemma-2's soft-capping, one sliding and one full
  layer in Gemma-2/3, Phi-3's fused projections) and sliding windows of 16 tokens where the family has one.
  Every linear layer has a multiple of 32 outputs, which bitsandbytes' CPU nf4 kernel needs.
"""

from __future__ import annotations

from typing import Any

from transformers import CLIPVisionConfig, LlamaConfig

# The geometry every tiny vision tower shares: width 32, 6 blocks, 2 heads, patch 28 at 224 px, 3 channels.
_TINY_VIT: dict[str, Any] = {
    "hidden_size": 32,
    "num_hidden_layers": 6,
    "num_attention_heads": 2,
    "num_channels": 3,
    "image_size": 224,
    "patch_size": 28,
}

TINY_CLIP_VISION: dict[str, Any] = {
    **_TINY_VIT,
    "intermediate_size": 64,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "projection_dim": 32,
}

# Tiny stand-ins of the other vision families (pneumollm.models.components.hf_vision), the same size as the tiny
# CLIP tower (MLP 64).
TINY_DINOV2: dict[str, Any] = {**_TINY_VIT, "mlp_ratio": 2, "layer_norm_eps": 1e-6, "layerscale_value": 1.0}

TINY_SIGLIP_VISION: dict[str, Any] = {**_TINY_VIT, "intermediate_size": 64, "layer_norm_eps": 1e-6}

# timm ViT keyword arguments of the same size (for TimmViTEncoder's model_kwargs).
TINY_TIMM_VIT: dict[str, Any] = {"embed_dim": 32, "depth": 6, "num_heads": 2, "mlp_ratio": 2.0, "patch_size": 28}

TINY_LLAMA: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "vocab_size": 32,
    "max_position_embeddings": 64,
    "rms_norm_eps": 1e-6,
    "hidden_act": "silu",
}


def tiny_clip_vision_config(**overrides: Any) -> CLIPVisionConfig:
    """A tiny CLIP vision tower configuration (see the module docstring for the sizes)."""
    return CLIPVisionConfig(**{**TINY_CLIP_VISION, **overrides})


def tiny_llama_config(**overrides: Any) -> LlamaConfig:
    """A tiny Llama decoder configuration (see the module docstring for the sizes)."""
    return LlamaConfig(**{**TINY_LLAMA, **overrides})


_TINY_DECODER: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 32,
    "max_position_embeddings": 64,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
}
_TINY_GEMMA = {**_TINY_DECODER, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32}
# model_type and hyper-parameters of a tiny random decoder per trunk family (AutoConfig.for_model(**values))
TINY_TRUNKS: dict[str, dict[str, Any]] = {
    "llama": {"model_type": "llama", **TINY_LLAMA},
    "mistral": {"model_type": "mistral", **_TINY_DECODER, "sliding_window": 16},
    "qwen2": {"model_type": "qwen2", **_TINY_DECODER},
    "qwen3": {"model_type": "qwen3", **_TINY_DECODER, "head_dim": 16},
    "gemma": {"model_type": "gemma", **_TINY_GEMMA},
    "gemma2": {"model_type": "gemma2", **_TINY_GEMMA, "sliding_window": 16,
               "layer_types": ["sliding_attention", "full_attention"]},
    "gemma3": {"model_type": "gemma3_text", **_TINY_GEMMA, "sliding_window": 16,
               "layer_types": ["sliding_attention", "full_attention"]},
    "phi3": {"model_type": "phi3", **_TINY_DECODER, "sliding_window": 16, "original_max_position_embeddings": 64},
}
