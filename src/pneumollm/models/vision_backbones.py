"""The vision backbones the suite can hold beyond the paper's, by name: hub id, encoder settings, licence note.

``encoder_config(name)`` gives the keyword arguments (with ``_target_``) of the encoder that holds a backbone,
pretrained from its hub id or as its random full-size architecture; ``backbone_sizes(name)`` builds that
architecture on the ``meta`` device (no memory, no download) and counts it.
``python -m pneumollm.models.vision_backbones`` prints the table of docs/backbones.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from pneumollm.models.tiny import TINY_TIMM_VIT

ENCODERS = {"hf": "pneumollm.models.components.encoders.HFVisionEncoder",
            "timm": "pneumollm.models.components.encoders.TimmViTEncoder"}


@dataclass(frozen=True)
class VisionBackbone:
    """A backbone: its hub id, which encoder holds it (``hf`` or ``timm``) with which settings (``settings``:
    always; ``architecture``: the random stand-in's, used with ``pretrained: false``), and its licence as the model
    card gave it (check the card before use)."""

    hub_id: str
    encoder: str
    settings: dict[str, Any]
    architecture: dict[str, Any]
    licence: str
    note: str = ""
    tiny: dict[str, Any] = field(default_factory=dict)  # the CPU stand-in of the same family


_HF_TINY = {"architecture": "tiny"}
_TIMM_TINY = {"model_kwargs": TINY_TIMM_VIT}

VISION_BACKBONES: dict[str, VisionBackbone] = {
    "clip_vit_l14": VisionBackbone(
        "openai/clip-vit-large-patch14", "hf", {"family": "clip", "normalization": "clip"},
        {"architecture": "vit_l14"}, "MIT (OpenAI's CLIP release); check the model card",
        "the paper's encoder", _HF_TINY),
    "rad_dino": VisionBackbone(
        "microsoft/rad-dino", "hf", {"family": "dinov2"}, {"architecture": "rad_dino"},
        "Microsoft Research License Agreement (MSRLA, research use) on the card's earlier revisions, MIT on a later "
        "one; research use only, not for clinical practice; check the model card",
        "chest-radiograph DINOv2 ViT-B/14; its preprocessor_config.json carries its own mean/std", _HF_TINY),
    "dinov2_vitb14": VisionBackbone(
        "facebook/dinov2-base", "hf", {"family": "dinov2"}, {"architecture": "vit_b14"},
        "Apache-2.0; check the model card", "", _HF_TINY),
    "dinov2_vitl14": VisionBackbone(
        "facebook/dinov2-large", "hf", {"family": "dinov2"}, {"architecture": "vit_l14"},
        "Apache-2.0; check the model card", "", _HF_TINY),
    "siglip_b16_224": VisionBackbone(
        "google/siglip-base-patch16-224", "hf", {"family": "siglip"}, {"architecture": "b16_224"},
        "Apache-2.0; check the model card", "no CLS token: mean of the patch tokens", _HF_TINY),
    "siglip_so400m_14_384": VisionBackbone(
        "google/siglip-so400m-patch14-384", "hf", {"family": "siglip"}, {"architecture": "so400m_14_384"},
        "Apache-2.0; check the model card", "no CLS token: mean of the patch tokens; 27 blocks", _HF_TINY),
    "biomedclip_b16": VisionBackbone(
        "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224", "timm",
        {"model_name": "vit_base_patch16_224", "multiscale": None}, {"normalization": "clip"},
        "MIT; check the model card",
        "open_clip folder: image tower visual.trunk.* = timm ViT-B/16; OpenAI CLIP statistics", _TIMM_TINY),
}


def vision_backbone(name: str) -> VisionBackbone:
    """The backbone called ``name``, or a ``ValueError`` listing the known ones."""
    if name not in VISION_BACKBONES:
        raise ValueError(f"unknown vision backbone {name!r}; choose one of {sorted(VISION_BACKBONES)}")
    return VISION_BACKBONES[name]


def encoder_config(name: str, pretrained: bool = True, size: str = "full", num_tokens: int = 6) -> dict[str, Any]:
    """Keyword arguments (with ``_target_``) of the encoder holding backbone ``name``: its weights from the hub id
    (``pretrained``), else its random architecture (``size``: ``full`` or ``tiny``), ``num_tokens`` evenly spaced
    blocks, RepAdapters on, frozen weights in bfloat16 (float32 for ``tiny``)."""
    backbone = vision_backbone(name)
    cfg: dict[str, Any] = {"_target_": ENCODERS[backbone.encoder], **backbone.settings, "num_tokens": num_tokens,
                           "frozen_dtype": "float32" if size == "tiny" else "bfloat16"}
    if pretrained:
        if size != "full":
            raise ValueError("pretrained weights exist at full size only; use pretrained=False for size='tiny'")
        return {**cfg, "pretrained": True, "name_or_path": backbone.hub_id}
    if size not in ("full", "tiny"):
        raise ValueError(f"size must be full or tiny, got {size!r}")
    return {**cfg, "pretrained": False, **backbone.architecture, **(backbone.tiny if size == "tiny" else {})}


def build_encoder(cfg: dict[str, Any]) -> torch.nn.Module:
    """Instantiate an ``encoder_config`` dict on the current default device."""
    import hydra.utils

    return hydra.utils.instantiate(cfg)


@dataclass(frozen=True)
class BackboneSizes:
    """A backbone as the encoder holds it: blocks, width, tokens, frozen and adapter parameters, weight bytes."""

    name: str
    blocks: int
    width: int
    block_indices: list[int]
    token: str
    frozen: int
    adapters: int
    pretraining_size: int
    patches_at_224: int
    gflops_at_224: float  # one film's forward pass (frozen tower and RepAdapters), torch's flop counter

    def weight_bytes(self, element_size: int) -> int:
        return self.frozen * element_size


def backbone_sizes(name: str) -> BackboneSizes:
    """Counts of backbone ``name``'s full-size architecture, built and run on the ``meta`` device."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        encoder = build_encoder(encoder_config(name, pretrained=False))
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            encoder.eval()(torch.zeros(1, 1, 224, 224))
    model = encoder.model
    if vision_backbone(name).encoder == "hf":
        config = model.config
        blocks, pretraining_size, patch = config.num_hidden_layers, config.image_size, config.patch_size
    else:
        blocks, pretraining_size = len(model.blocks), model.patch_embed.img_size[0]
        patch = model.patch_embed.patch_size[0]
    return BackboneSizes(
        name=name, blocks=blocks, width=encoder.width, block_indices=list(encoder.block_indices), token=encoder.token,
        frozen=sum(p.numel() for p in encoder.parameters() if not p.requires_grad),
        adapters=sum(p.numel() for p in encoder.parameters() if p.requires_grad),
        pretraining_size=pretraining_size, patches_at_224=(224 // patch) ** 2,
        gflops_at_224=counter.get_total_flops() / 1e9)


def markdown_table(names: Sequence[str] | None = None) -> str:
    """The size table of docs/backbones.md for ``names`` (default: every backbone)."""
    from pneumollm.utils.markdown import markdown_table as table

    rows = []
    for name in names or list(VISION_BACKBONES):
        s = backbone_sizes(name)
        rows.append([name, vision_backbone(name).hub_id, str(s.blocks), str(s.width), s.token,
                     ", ".join(map(str, s.block_indices)), f"{s.frozen:,}", f"{s.adapters:,}",
                     f"{s.weight_bytes(2) / 1e9:.2f}", f"{s.weight_bytes(4) / 1e9:.2f}",
                     str(s.pretraining_size), str(s.patches_at_224), f"{s.gflops_at_224:.1f}"])
    return table(["name", "hub id", "blocks", "width", "token", "blocks used (6 tokens)", "frozen params",
                  "RepAdapter params", "bf16 GB", "fp32 GB", "pre-training px", "patches at 224 px",
                  "GFLOPs per film at 224 px"], rows,
                 align=["left", "left", "right", "right", "left", "left", *["right"] * 7])
