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
"""

from __future__ import annotations

from typing import Any

from transformers import CLIPVisionConfig, LlamaConfig

TINY_CLIP_VISION: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 6,
    "num_attention_heads": 2,
    "num_channels": 3,
    "image_size": 224,
    "patch_size": 28,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "projection_dim": 32,
}

# Tiny stand-ins of the other vision families (pneumollm.models.components.hf_vision), the same size as the tiny
# CLIP tower: width 32, 6 blocks, 2 heads, MLP 64, patch 28 at 224 px.
TINY_DINOV2: dict[str, Any] = {
    "hidden_size": 32,
    "mlp_ratio": 2,
    "num_hidden_layers": 6,
    "num_attention_heads": 2,
    "num_channels": 3,
    "image_size": 224,
    "patch_size": 28,
    "layer_norm_eps": 1e-6,
    "layerscale_value": 1.0,
}

TINY_SIGLIP_VISION: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 6,
    "num_attention_heads": 2,
    "num_channels": 3,
    "image_size": 224,
    "patch_size": 28,
    "layer_norm_eps": 1e-6,
}

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
