"""End-to-end image classifiers from timm: the Table 2 arms (one registered factory each) and any other timm
model (``TimmClassifier`` with its ``model_name``, e.g. ``conf/model/timm_resnet18.yaml``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from pneumollm.models.base import ImageClassifier, InputNormalizer
from pneumollm.models.components.pretrained import TimmWeights, WeightsNotFoundError, load_pretrained, timm_hub_id
from pneumollm.models.registry import register_arm


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

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(self.normalize(images))

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.backbone.forward_head(features, pre_logits=pre_logits)


# The paper's Table 2 rows; ``published``: the form its L-para column counts (an ImageNet-1k head).
IMAGENET_HEAD = {"num_classes": 1000}


@register_arm(published=IMAGENET_HEAD)
def resnet50(**kwargs: Any) -> TimmClassifier:
    """Table 2 "ResNet": ResNet-50 (the paper cites ResNeXt but lists ResNet-50's 25.56 M)."""
    return TimmClassifier("resnet50", **kwargs)


@register_arm(published=IMAGENET_HEAD)
def vit_b16(**kwargs: Any) -> TimmClassifier:
    """Table 2 "ViT": ViT-B/16 at 224 px."""
    return TimmClassifier("vit_base_patch16_224", **kwargs)


@register_arm(published=IMAGENET_HEAD)
def swin_t(**kwargs: Any) -> TimmClassifier:
    """Table 2 "Swin Transformer": Swin-T (patch 4, window 7, 224 px)."""
    return TimmClassifier("swin_tiny_patch4_window7_224", **kwargs)


@register_arm(published=IMAGENET_HEAD)
def convnext_b(**kwargs: Any) -> TimmClassifier:
    """Table 2 "ConvNeXt": ConvNeXt-B."""
    return TimmClassifier("convnext_base", **kwargs)


@register_arm(published={"num_classes": 0, "model_kwargs": {"img_size": 518}})  # published at 518 px, no head
def dinov2_vits14(**kwargs: Any) -> TimmClassifier:
    """Table 2 "DINOv2": DINOv2 ViT-S/14 (LVD-142M weights), here at 224 px."""
    return TimmClassifier("vit_small_patch14_dinov2", **kwargs)
