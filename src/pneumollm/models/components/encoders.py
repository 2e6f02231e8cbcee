"""Vision encoders that turn a film into d source tokens [B, d, width].

Every encoder normalises its own input (greyscale [B, 1, H, W] in [0, 1]) with its pre-training
statistics and returns float32 tokens whatever its frozen weights' dtype.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import timm
import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

from pneumollm.models.base import InputNormalizer
from pneumollm.models.components.adapters import (
    AdapterSite,
    AdapterSpec,
    attach_repadapters,
    attention_sites,
    fold_repadapters,
)
from pneumollm.models.components.frozen import enable_gradient_checkpointing, freeze, resolve_dtype, seeded
from pneumollm.models.components.pretrained import (
    CLIP_TEXT_TOWER,
    CheckpointRules,
    TimmWeights,
    load_or_build,
    load_pretrained,
    timm_hub_id,
)
from pneumollm.models.tiny import TINY_CLIP_VISION

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
# A CLIP vision tower loads from a vision-only folder or a whole CLIP checkpoint (its text tower left out).
CLIP_VISION_RULES = CheckpointRules(model_types={"clip", "clip_vision_model"}, unused=(CLIP_TEXT_TOWER,),
                                    what="CLIP vision tower")


class VisionEncoder(nn.Module):
    """Images [B, 1, H, W] in [0, 1] -> source tokens [B, num_tokens, width] (float32)."""

    width: int
    num_tokens: int

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def fold_adapters(self) -> int:
        """Merge RepAdapters into the following linear layers (inference); returns how many were folded."""
        return 0


def multiscale_indices(num_blocks: int, multiscale: int) -> list[int]:
    """Block counts after which the CLS token is taken: multiscale, 2*multiscale, ... <= num_blocks."""
    if multiscale < 1 or multiscale > num_blocks:
        raise ValueError(f"multiscale must be between 1 and the number of blocks ({num_blocks}), got {multiscale}")
    return list(range(multiscale, num_blocks + 1, multiscale))


class ClipVisionEncoder(VisionEncoder):
    """The vision tower of CLIP (Hugging Face ``CLIPVisionModel``), frozen, with RepAdapters.

    Tokens: the CLS position of the residual stream after every ``multiscale``-th block (no post
    layer-norm, no projection). ``pretrained: true`` loads ``name_or_path`` (hub id or local folder;
    a full CLIP checkpoint works, only its vision tower is kept). ``pretrained: false`` builds the
    ``architecture`` (``vit_l14`` or ``tiny``) randomly initialised with seed ``init_seed``;
    ``config_overrides`` change its fields (e.g. fewer layers in tests). ``gradient_checkpointing``
    recomputes each block in the backward pass (non-reentrant) instead of keeping its activations.
    """

    def __init__(
        self,
        name_or_path: str = "openai/clip-vit-large-patch14",
        pretrained: bool = True,
        architecture: str = "vit_l14",
        config_overrides: Mapping[str, Any] | None = None,
        multiscale: int = 4,
        adapter: Mapping[str, Any] | AdapterSpec | None = None,
        normalization: str | Sequence[Sequence[float]] = "clip",
        frozen_dtype: str | torch.dtype = "auto",
        attn_implementation: str = "sdpa",
        init_seed: int | None = 0,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        model = load_or_build(CLIPVisionModel, CLIPVisionConfig, CLIP_ARCHITECTURES, pretrained=pretrained,
                              name_or_path=name_or_path, architecture=architecture,
                              config_overrides=config_overrides, frozen_dtype=frozen_dtype,
                              attn_implementation=attn_implementation, init_seed=init_seed,
                              rules=CLIP_VISION_RULES).model
        self.model = model
        config = model.config
        self.width = config.hidden_size
        self.block_indices = multiscale_indices(config.num_hidden_layers, multiscale)
        self.num_tokens = len(self.block_indices)
        self.normalize = InputNormalizer(normalization, channels=config.num_channels)
        self.adapter_spec = AdapterSpec.parse(adapter, allowed=("repadapter", "none"))
        if self.adapter_spec.enabled:
            attach_repadapters(self.adapter_sites(), self.width, self.adapter_spec)
        if gradient_checkpointing:
            enable_gradient_checkpointing(self.model)

    def _tower(self) -> nn.Module:
        # transformers 5 puts the embeddings and encoder on CLIPVisionModel itself, 4.x under .vision_model
        return getattr(self.model, "vision_model", self.model)

    def adapter_sites(self) -> Iterator[AdapterSite]:
        """Where adapters go: each block's ``layer_norm1``, which feeds q, k and v."""
        return attention_sites(self._tower().encoder.layers, "layer_norm1")

    @property
    def frozen_dtype(self) -> torch.dtype:
        """The frozen weights' current dtype (what the input is cast to)."""
        return self._tower().embeddings.patch_embedding.weight.dtype

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = self.normalize(images.float()).to(self.frozen_dtype)
        states = self.model(pixel_values=pixels, output_hidden_states=True).hidden_states
        return torch.stack([states[i][:, 0] for i in self.block_indices], dim=1).float()

    def fold_adapters(self) -> int:
        return fold_repadapters(self.adapter_sites())


class TimmViTEncoder(VisionEncoder):
    """A timm Vision Transformer (e.g. ViT-B/16 or ViT-L/16 from ImageNet-21k), frozen, with RepAdapters.

    Tokens: the CLS token after every ``multiscale``-th block, before the final norm. ``pretrained``
    loads weights from ``name_or_path`` (a timm hub id such as ``timm/vit_base_patch16_224.augreg_in21k``,
    a local folder with ``model.safetensors``, or a checkpoint file); default: the model's own hub id.
    ``normalization: model`` uses the model's pre-training statistics. ``gradient_checkpointing`` uses timm's
    (non-reentrant by default) block checkpointing.
    """

    def __init__(
        self,
        model_name: str = "vit_base_patch16_224.augreg_in21k",
        pretrained: bool = False,
        name_or_path: str | None = None,
        multiscale: int = 2,
        adapter: Mapping[str, Any] | AdapterSpec | None = None,
        normalization: str | Sequence[Sequence[float]] = "model",
        frozen_dtype: str | torch.dtype = "auto",
        init_seed: int | None = 0,
        model_kwargs: Mapping[str, Any] | None = None,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        dtype = resolve_dtype(frozen_dtype)
        kwargs = {"num_classes": 0, **dict(model_kwargs or {})}
        if pretrained:
            target = name_or_path or timm_hub_id(model_name)
            model = load_pretrained(TimmWeights(model_name, **kwargs), target)
        else:
            with seeded(init_seed):
                model = timm.create_model(model_name, pretrained=False, **kwargs)
        if getattr(model, "num_prefix_tokens", 0) < 1 or not hasattr(model, "forward_intermediates"):
            raise ValueError(f"timm model {model_name!r} has no CLS token to extract; use a ViT with a class token")
        self.model = freeze(model.to(dtype))
        self.width = model.embed_dim
        self.block_indices = multiscale_indices(len(model.blocks), multiscale)
        self.num_tokens = len(self.block_indices)
        if normalization == "model":
            cfg = model.pretrained_cfg
            normalization = (cfg.get("mean", (0.5, 0.5, 0.5)), cfg.get("std", (0.5, 0.5, 0.5)))
        self.normalize = InputNormalizer(normalization, channels=model.patch_embed.proj.in_channels)
        self.adapter_spec = AdapterSpec.parse(adapter, allowed=("repadapter", "none"))
        if self.adapter_spec.enabled:
            attach_repadapters(self.adapter_sites(), self.width, self.adapter_spec)
        if gradient_checkpointing:
            self.model.set_grad_checkpointing(True)

    def adapter_sites(self) -> Iterator[AdapterSite]:
        """Where adapters go: each block's ``norm1``, which feeds the fused qkv projection."""
        return attention_sites(self.model.blocks, "norm1", ("attn.qkv",))

    @property
    def frozen_dtype(self) -> torch.dtype:
        """The frozen weights' current dtype (what the input is cast to)."""
        return self.model.patch_embed.proj.weight.dtype

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = self.normalize(images.float()).to(self.frozen_dtype)
        out = self.model.forward_intermediates(
            pixels, indices=[i - 1 for i in self.block_indices], return_prefix_tokens=True, norm=False,
            stop_early=True, output_fmt="NLC", intermediates_only=True, output_dict=True,
        )
        return torch.stack([prefix[:, 0] for prefix in out["image_intermediates_prefix"]], dim=1).float()

    def fold_adapters(self) -> int:
        return fold_repadapters(self.adapter_sites())


class ConvStemEncoder(VisionEncoder):
    """One ``patch_size`` x ``patch_size`` patchify convolution; the feature map average-pooled to
    ``token_grid`` (rows, columns) gives the tokens.

    No pre-trained weights exist for it, so it trains by default (``trainable``); a frozen random
    stem is available for the strict "only adapters train" protocol.
    """

    def __init__(
        self,
        width: int = 1024,
        patch_size: int = 14,
        token_grid: Sequence[int] = (2, 3),
        trainable: bool = True,
        normalization: str | Sequence[Sequence[float]] = "imagenet",
        init_seed: int | None = 0,
    ) -> None:
        super().__init__()
        grid = tuple(token_grid)
        if len(grid) != 2 or min(grid) < 1:
            raise ValueError(f"token_grid must be two positive integers (rows, columns), got {token_grid}")
        self.width = width
        self.num_tokens = grid[0] * grid[1]
        self.normalize = InputNormalizer(normalization, channels=3)
        with seeded(None if trainable else init_seed):
            self.stem = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size)
        self.pool = nn.AdaptiveAvgPool2d(grid)
        if not trainable:
            freeze(self.stem)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.pool(self.stem(self.normalize(images.float())))
        return features.flatten(2).transpose(1, 2)


__all__ = [
    "ClipVisionEncoder",
    "ConvStemEncoder",
    "TimmViTEncoder",
    "VisionEncoder",
    "multiscale_indices",
]
