"""Vision encoders that turn a film into d source tokens [B, d, width].

Every encoder normalises its own input (greyscale [B, 1, H, W] in [0, 1]) with its pre-training
statistics and returns float32 tokens whatever its frozen weights' dtype. Which blocks give the tokens and what a
token is (CLS or the mean of the patch tokens): ``pneumollm.models.components.vision_tokens``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import timm
import torch
from torch import nn

from pneumollm.models.base import InputNormalizer
from pneumollm.models.components.adapters import (
    AdapterSite,
    AdapterSpec,
    attach_repadapters,
    attention_sites,
    fold_repadapters,
)
from pneumollm.models.components.frozen import enable_gradient_checkpointing, freeze, resolve_dtype, seeded
from pneumollm.models.components.hf_vision import (
    CLIP_ARCHITECTURES,
    CLIP_VIT_L14_VISION,
    HFVisionFamily,
    hf_vision_family,
)
from pneumollm.models.components.pretrained import (
    CheckpointRules,
    TimmWeights,
    WeightsMismatchError,
    load_or_build,
    load_pretrained,
    timm_hub_id,
)
from pneumollm.models.components.vision_tokens import check_token_kind, multiscale_indices, pool_block, token_blocks
from pneumollm.models.components.weights_folder import open_clip_vision_config, resolve_input_stats

# A CLIP vision tower loads from a vision-only folder or a whole CLIP checkpoint (its text tower left out).
CLIP_VISION_RULES = CheckpointRules(model_types=hf_vision_family("clip").model_types,
                                    unused=hf_vision_family("clip").unused, what="CLIP vision tower")


class VisionEncoder(nn.Module):
    """Images [B, 1, H, W] in [0, 1] -> source tokens [B, num_tokens, width] (float32)."""

    width: int
    num_tokens: int

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def fold_adapters(self) -> int:
        """Merge RepAdapters into the following linear layers (inference); returns how many were folded."""
        return 0


class HFVisionEncoder(VisionEncoder):
    """A frozen Hugging Face vision tower with RepAdapters, for every model type of ``HF_VISION_FAMILIES``:
    ``clip`` (CLIP ViT), ``dinov2`` (DINOv2, RAD-DINO), ``siglip`` (SigLIP's vision tower).

    Weights: ``pretrained: true`` loads ``name_or_path`` (hub id or local folder; a whole CLIP / SigLIP checkpoint
    works, only its vision tower is kept; the checkpoint's ``model_type`` must be the family's and every tensor
    must load, see ``CheckpointRules``). ``pretrained: false`` builds ``architecture`` (the family's built-in
    configs: full size for counts and offline runs, ``tiny`` for the CPU) randomly initialised with ``init_seed``;
    ``config_overrides`` change its fields.

    Tokens: the blocks chosen by ``multiscale`` (every s-th block) or ``num_tokens`` (n evenly spaced blocks ending
    at the last, see ``vision_tokens``); from each, the ``token``: ``cls`` (the CLS position of the residual stream
    after the block: no final norm, no projection) or ``patch_mean`` (the mean of the block's patch tokens); by
    default the family's (SigLIP has no CLS token: ``patch_mean``).

    Input: films of any size; position embeddings are interpolated (bicubic) when it differs from the tower's
    pre-training size. ``normalization``: ``model`` takes the folder's ``preprocessor_config.json`` statistics when
    there is one, else the family's default (CLIP's, ImageNet's for DINOv2, 0.5/0.5 for SigLIP); a name of
    ``NORMALIZATION_STATS`` or ``[mean, std]`` sets them. RepAdapters wrap each block's norm that feeds q/k/v.
    ``gradient_checkpointing`` recomputes each block in the backward pass (non-reentrant).
    """

    def __init__(
        self,
        family: str = "dinov2",
        name_or_path: str | None = None,
        pretrained: bool = True,
        architecture: str | None = None,
        config_overrides: Mapping[str, Any] | None = None,
        num_tokens: int | None = 6,
        multiscale: int | None = None,
        token: str | None = None,
        adapter: Mapping[str, Any] | AdapterSpec | None = None,
        normalization: str | Sequence[Sequence[float]] = "model",
        frozen_dtype: str | torch.dtype = "auto",
        attn_implementation: str = "sdpa",
        init_seed: int | None = 0,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        spec = hf_vision_family(family)
        self._family = spec
        self.family = spec.name
        random_config = None if pretrained else {**spec.frozen_config, **dict(config_overrides or {})}
        self.model = load_or_build(
            spec.model_class, spec.config_class, dict(spec.architectures), pretrained=pretrained,
            name_or_path=name_or_path, architecture=architecture or spec.default_architecture,
            config_overrides=config_overrides if pretrained else random_config, frozen_dtype=frozen_dtype,
            attn_implementation=attn_implementation, init_seed=init_seed,
            rules=CheckpointRules(model_types=spec.model_types, unused=spec.unused, what=spec.what),
            load_kwargs=dict(spec.frozen_config) if pretrained else None).model
        config = self.model.config
        self.width = config.hidden_size
        self.image_size = config.image_size
        self.block_indices = token_blocks(config.num_hidden_layers, multiscale, num_tokens)
        self.num_tokens = len(self.block_indices)
        self.token = check_token_kind(token or spec.token, spec.num_prefix_tokens, spec.what)
        stats = resolve_input_stats(normalization, spec.normalization, name_or_path if pretrained else None)
        self.normalization_source = stats.source
        self.normalize = InputNormalizer(stats.pair, channels=config.num_channels)
        self.qkv = self._find_qkv(spec)
        self.adapter_spec = AdapterSpec.parse(adapter, allowed=("repadapter", "none"))
        if self.adapter_spec.enabled:
            attach_repadapters(self.adapter_sites(), self.width, self.adapter_spec)
        if gradient_checkpointing:
            enable_gradient_checkpointing(self.model)

    def _tower(self) -> nn.Module:
        # transformers 5 puts the embeddings and encoder on CLIPVisionModel itself, 4.x under .vision_model
        return getattr(self.model, "vision_model", self.model)

    def _layers(self) -> nn.Module:
        return self._tower().get_submodule(self._family.layers)

    def _find_qkv(self, spec: HFVisionFamily) -> tuple[str, ...]:
        block = self._layers()[0]
        names = {name for name, _ in block.named_modules()}
        for candidate in spec.qkv:
            if all(path in names for path in candidate):
                return candidate
        raise RuntimeError(f"{type(block).__name__} has none of the q/k/v layouts {spec.qkv}: this transformers "
                           "version changed the layer; update HF_VISION_FAMILIES")

    def adapter_sites(self) -> Iterator[AdapterSite]:
        """Where adapters go: each block's norm that feeds q, k and v (CLIP/SigLIP ``layer_norm1``, DINOv2
        ``norm1``)."""
        return attention_sites(self._layers(), self._family.norm, self.qkv)

    @property
    def frozen_dtype(self) -> torch.dtype:
        """The frozen weights' current dtype (what the input is cast to)."""
        return next(self.model.get_input_embeddings().parameters()).dtype

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = self.normalize(images.float()).to(self.frozen_dtype)
        extra = {}
        if self._family.interpolates and tuple(pixels.shape[-2:]) != (self.image_size, self.image_size):
            extra["interpolate_pos_encoding"] = True
        states = self.model(pixel_values=pixels, output_hidden_states=True, **extra).hidden_states
        prefix = self._family.num_prefix_tokens
        return torch.stack([pool_block(states[i], self.token, prefix) for i in self.block_indices], dim=1)

    def fold_adapters(self) -> int:
        return fold_repadapters(self.adapter_sites())


class ClipVisionEncoder(HFVisionEncoder):
    """The vision tower of CLIP (Hugging Face ``CLIPVisionModel``), frozen, with RepAdapters: ``HFVisionEncoder``
    with ``family: clip`` and the paper's defaults.

    Tokens: the CLS position of the residual stream after every ``multiscale``-th block (no post
    layer-norm, no projection); ``num_tokens`` instead chooses n evenly spaced blocks. ``pretrained: true`` loads
    ``name_or_path`` (hub id or local folder; a full CLIP checkpoint works, only its vision tower is kept).
    ``pretrained: false`` builds the ``architecture`` (``vit_l14`` or ``tiny``) randomly initialised with seed
    ``init_seed``; ``config_overrides`` change its fields (e.g. fewer layers in tests). ``gradient_checkpointing``
    recomputes each block in the backward pass (non-reentrant) instead of keeping its activations.
    """

    def __init__(
        self,
        name_or_path: str = "openai/clip-vit-large-patch14",
        pretrained: bool = True,
        architecture: str = "vit_l14",
        config_overrides: Mapping[str, Any] | None = None,
        multiscale: int | None = 4,
        adapter: Mapping[str, Any] | AdapterSpec | None = None,
        normalization: str | Sequence[Sequence[float]] = "clip",
        frozen_dtype: str | torch.dtype = "auto",
        attn_implementation: str = "sdpa",
        init_seed: int | None = 0,
        gradient_checkpointing: bool = False,
        num_tokens: int | None = None,
        token: str | None = None,
    ) -> None:
        super().__init__(family="clip", name_or_path=name_or_path, pretrained=pretrained, architecture=architecture,
                         config_overrides=config_overrides, num_tokens=num_tokens, multiscale=multiscale,
                         token=token, adapter=adapter, normalization=normalization, frozen_dtype=frozen_dtype,
                         attn_implementation=attn_implementation, init_seed=init_seed,
                         gradient_checkpointing=gradient_checkpointing)


class TimmViTEncoder(VisionEncoder):
    """A timm Vision Transformer (e.g. ViT-B/16 or ViT-L/16 from ImageNet-21k, BiomedCLIP's image tower), frozen,
    with RepAdapters.

    Tokens: the blocks chosen by ``multiscale`` or ``num_tokens`` (see ``vision_tokens``), before the final norm;
    ``token: cls`` (default) or ``patch_mean`` (the only choice for ViTs without a class token). ``pretrained``
    loads weights from ``name_or_path``: a timm hub id such as ``timm/vit_base_patch16_224.augreg_in21k``, a local
    folder with ``model.safetensors`` / ``pytorch_model.bin``, an open_clip folder whose image tower is a timm ViT
    (``open_clip_pytorch_model.bin`` with ``visual.trunk.*``, e.g. BiomedCLIP; its ``open_clip_config.json`` names
    the timm model, which ``model_name: null`` adopts and an explicit ``model_name`` must match), or a checkpoint
    file; default: the model's own hub id. ``normalization: model`` uses the statistics the folder declares
    (open_clip's ``preprocess_cfg``, a timm ``config.json``), else the model's own ``pretrained_cfg``.
    ``gradient_checkpointing`` uses timm's (non-reentrant by default) block checkpointing.
    """

    def __init__(
        self,
        model_name: str | None = "vit_base_patch16_224.augreg_in21k",
        pretrained: bool = False,
        name_or_path: str | None = None,
        multiscale: int | None = 2,
        adapter: Mapping[str, Any] | AdapterSpec | None = None,
        normalization: str | Sequence[Sequence[float]] = "model",
        frozen_dtype: str | torch.dtype = "auto",
        init_seed: int | None = 0,
        model_kwargs: Mapping[str, Any] | None = None,
        gradient_checkpointing: bool = False,
        num_tokens: int | None = None,
        token: str = "cls",
    ) -> None:
        super().__init__()
        dtype = resolve_dtype(frozen_dtype)
        kwargs = {"num_classes": 0, **dict(model_kwargs or {})}
        if pretrained:
            target = name_or_path or timm_hub_id(_required_name(model_name))
            model_name = _open_clip_model_name(target, model_name, kwargs)
            model = load_pretrained(TimmWeights(model_name, **kwargs), target)
        else:
            with seeded(init_seed):
                model = timm.create_model(_required_name(model_name), pretrained=False, **kwargs)
        if not hasattr(model, "forward_intermediates") or not hasattr(model, "blocks"):
            raise ValueError(f"timm model {model_name!r} is not a Vision Transformer with forward_intermediates")
        self.model_name = model_name
        self.model = freeze(model.to(dtype))
        self.width = model.embed_dim
        self.num_prefix_tokens = getattr(model, "num_prefix_tokens", 0)
        self.token = check_token_kind(token, self.num_prefix_tokens, f"timm model {model_name!r}")
        self.block_indices = token_blocks(len(model.blocks), multiscale, num_tokens)
        self.num_tokens = len(self.block_indices)
        cfg = model.pretrained_cfg
        stats = resolve_input_stats(normalization, (cfg.get("mean", (0.5, 0.5, 0.5)), cfg.get("std", (0.5, 0.5, 0.5))),
                                    name_or_path if pretrained else None)
        self.normalization_source = stats.source
        self.normalize = InputNormalizer(stats.pair, channels=model.patch_embed.proj.in_channels)
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
        cls = self.token == "cls"
        out = self.model.forward_intermediates(
            pixels, indices=[i - 1 for i in self.block_indices], return_prefix_tokens=cls, norm=False,
            stop_early=True, output_fmt="NLC", intermediates_only=True, output_dict=True,
        )
        if cls:
            return torch.stack([prefix[:, 0] for prefix in out["image_intermediates_prefix"]], dim=1).float()
        return torch.stack([pool_block(patches, "patch_mean", 0) for patches in out["image_intermediates"]], dim=1)

    def fold_adapters(self) -> int:
        return fold_repadapters(self.adapter_sites())


def _required_name(model_name: str | None) -> str:
    if model_name is None:
        raise ValueError("model_name: null only works with pretrained open_clip weights whose open_clip_config.json "
                         "names the timm model; set model_name (e.g. vit_base_patch16_224)")
    return model_name


def _open_clip_model_name(target: str, model_name: str | None, kwargs: dict[str, Any]) -> str:
    """The timm model to build for ``target``: ``model_name``, checked against (or, when None, taken from) the
    ``timm_model_name`` of an open_clip folder's ``open_clip_config.json``, whose ``image_size`` also sets
    ``img_size`` unless ``model_kwargs`` does."""
    vision = open_clip_vision_config(target)
    named = (vision or {}).get("timm_model_name")
    if vision is None or not named:
        return _required_name(model_name)
    if model_name is not None and model_name.split(".")[0] != named.split(".")[0]:
        raise WeightsMismatchError(
            f"{target}: open_clip_config.json says the image tower is timm {named!r}, not {model_name!r}; set "
            f"model_name: {named} (or null to take it from the folder)")
    if vision.get("image_size") and "img_size" not in kwargs:
        kwargs["img_size"] = vision["image_size"]
    return model_name or named


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
    "CLIP_ARCHITECTURES",
    "CLIP_VISION_RULES",
    "CLIP_VIT_L14_VISION",
    "ClipVisionEncoder",
    "ConvStemEncoder",
    "HFVisionEncoder",
    "TimmViTEncoder",
    "VisionEncoder",
    "multiscale_indices",
]
