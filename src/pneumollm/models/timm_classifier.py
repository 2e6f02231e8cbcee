"""End-to-end image classifiers from timm (the foundation's default model and the Table 2 arms)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from pneumollm.models.base import ImageClassifier, InputNormalizer
from pneumollm.models.components.pretrained import TimmWeights, WeightsNotFoundError, load_pretrained, timm_hub_id


def create_timm_model(
    model_name: str,
    num_classes: int,
    pretrained: bool = False,
    checkpoint_path: str | None = None,
    **model_kwargs: Any,
) -> nn.Module:
    """``timm.create_model`` with pretrained weights from the hub (``pretrained``) or a local file.

    A ``checkpoint_path`` implies ``pretrained``. Weights load through ``TimmWeights``: the model's own
    checkpoint filter (so a DINOv2 checkpoint at 518 px is resampled to ``img_size=224``), the ImageNet head
    replaced by a fresh ``num_classes`` head, and every other tensor loaded or the load refused.
    """
    if checkpoint_path:
        path = Path(checkpoint_path).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(f"timm checkpoint {checkpoint_path!r} for {model_name!r} does not exist")
        return load_pretrained(TimmWeights(model_name, num_classes=num_classes, **model_kwargs), path)
    if pretrained:
        return load_pretrained(TimmWeights(model_name, num_classes=num_classes, **model_kwargs),
                               timm_hub_id(model_name))
    return timm.create_model(model_name, pretrained=False, num_classes=num_classes, **model_kwargs)


class TimmClassifier(ImageClassifier):
    """A timm backbone with a fresh ``num_classes`` head, trained end to end.

    ``pretrained=True`` loads ImageNet weights: from ``checkpoint_path`` (a local file) when given,
    else from the Hugging Face hub through timm. Random initialisation otherwise (offline default).
    ``model_kwargs`` pass through to ``timm.create_model`` (e.g. ``img_size`` or reduced widths).
    """

    def __init__(
        self,
        model_name: str,
        num_classes: int = 2,
        pretrained: bool = False,
        checkpoint_path: str | None = None,
        normalization: str = "imagenet",
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        kwargs = dict(model_kwargs or {})
        self.normalize = InputNormalizer(normalization, channels=kwargs.get("in_chans", 3))
        self.backbone = create_timm_model(model_name, num_classes, pretrained, checkpoint_path, **kwargs)

    def extract_features(self, images: torch.Tensor) -> torch.Tensor:
        features = self.backbone.forward_features(self.normalize(images))
        return self.backbone.forward_head(features, pre_logits=True)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.normalize(images))

    def forward_with_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feature_map = self.backbone.forward_features(self.normalize(images))
        return self.backbone.forward_head(feature_map), self.backbone.forward_head(feature_map, pre_logits=True)
