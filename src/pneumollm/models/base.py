"""The contract every model of the suite fulfils, and the shared input normaliser."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

# Per-channel statistics of the encoders' own pre-training data: OpenAI CLIP's (also BiomedCLIP's), ImageNet's
# (DINOv2, timm in1k/in21k models), SigLIP's (every channel to [-1, 1]).
NORMALIZATION_STATS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "siglip": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}


class InputNormalizer(nn.Module):
    """Turns greyscale films in [0, 1] of shape [B, 1, H, W] into normalised [B, C, H, W] input."""

    def __init__(self, stats: str | Sequence[Sequence[float]] = "clip", channels: int = 3) -> None:
        super().__init__()
        if isinstance(stats, str):
            if stats not in NORMALIZATION_STATS:
                raise ValueError(f"unknown normalisation {stats!r}; choose one of {sorted(NORMALIZATION_STATS)}")
            mean, std = NORMALIZATION_STATS[stats]
        else:
            mean, std = stats
        self.channels = channels
        self.register_buffer("mean", torch.tensor(mean[:channels]).view(1, channels, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std[:channels]).view(1, channels, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] == 1 and self.channels != 1:
            images = images.expand(-1, self.channels, -1, -1)
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)


@dataclass
class FrozenPrefix:
    """The frozen first part of a model's image path: ``module`` maps films [B, 1, H, W] in [0, 1] to features
    that never change while the rest trains, so they may be computed once per film (``feature_cache``).

    ``settings``: what besides its weights decides its output (which blocks' tokens it takes, its attention
    implementation...), part of the cache key (see ``module_settings``).
    """

    module: nn.Module
    settings: dict[str, Any] = field(default_factory=dict)


def module_settings(module: nn.Module) -> dict[str, Any]:
    """The plain settings of ``module`` and its submodules: their int/float/str/bool/list attributes and the
    Hugging Face configs they hold. Weights and buffers are not included (the cache key hashes those)."""
    plain = (bool, int, float, str, list, tuple)
    settings: dict[str, Any] = {}
    for name, sub in module.named_modules():
        own = {k: v for k, v in vars(sub).items()
               if not k.startswith("_") and k != "training" and isinstance(v, plain)}
        config = getattr(sub, "config", None)
        if hasattr(config, "to_dict"):
            own["config"] = config.to_dict()
        if own:
            settings[name or "."] = own
    return settings


class ImageClassifier(nn.Module):
    """Base class of every model the training module can drive.

    Input: greyscale films, float tensor [B, 1, H, W] with values in [0, 1] (H = W = 224 by default).
    As in timm, a model implements two steps: ``forward_features`` (films -> what its head reads) and
    ``forward_head`` (that -> class logits [B, num_classes], or with ``pre_logits=True`` the head's input
    features [B, F], used for t-SNE plots); ``forward``, ``extract_features`` and ``forward_with_features``
    follow from them. Parameters that should not train must have ``requires_grad=False``; the training
    module optimises exactly the parameters that require gradients and checkpoints only those.
    """

    num_classes: int = 2

    def forward_features(self, images: torch.Tensor) -> Any:  # pragma: no cover - abstract
        """The output of the model's body: whatever ``forward_head`` reads (a tensor or a tuple of them)."""
        raise NotImplementedError

    def forward_head(self, features: Any, pre_logits: bool = False) -> torch.Tensor:  # pragma: no cover
        """Logits [B, num_classes] from ``forward_features``' output; with ``pre_logits`` the head's input [B, F]."""
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images))

    def extract_features(self, images: torch.Tensor) -> torch.Tensor:
        """The head's input features [B, F]."""
        return self.forward_head(self.forward_features(images), pre_logits=True)

    def forward_with_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(forward(images), extract_features(images))`` from one pass through the body."""
        return self.head_outputs(self.forward_features(images))

    def head_outputs(self, features: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, the head's input features) from ``forward_features``' output."""
        return self.forward_head(features), self.forward_head(features, pre_logits=True)

    def frozen_prefix(self) -> FrozenPrefix | None:
        """The frozen first part of the image path whose output the training loop may cache, or None."""
        return None

    def forward_from_prefix(self, prefix_output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward_with_features`` from the output of ``frozen_prefix().module`` instead of the films."""
        raise NotImplementedError(f"{type(self).__name__} has no frozen prefix")

    def trainable_parameter_count(self) -> int:
        """Number of parameters that receive gradients."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def total_parameter_count(self) -> int:
        """Number of all parameters, frozen ones included."""
        return sum(p.numel() for p in self.parameters())
