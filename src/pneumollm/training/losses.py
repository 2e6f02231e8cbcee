"""Classification losses, each paired with the way it turns logits into P(pneumoconiosis)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ClassificationLoss(nn.Module):
    """A loss over logits [B, C] and integer targets [B], plus the matching positive-class probability."""

    positive_index: int = 1

    def positive_probability(self, logits: torch.Tensor) -> torch.Tensor:
        """P(pneumoconiosis) per sample: softmax over the classes, column ``positive_index``."""
        return logits.float().softmax(dim=-1)[:, self.positive_index]


class OneHotBCELoss(ClassificationLoss):
    """``bce2``: binary cross-entropy on each logit against a one-hot target, as in the reference code.

    Prediction still uses the softmax over the logits (argmax), as the reference does.
    """

    def __init__(self, num_classes: int = 2) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        one_hot = F.one_hot(target.long(), self.num_classes).to(logits.dtype)
        return F.binary_cross_entropy_with_logits(logits, one_hot)


class CrossEntropyLoss(ClassificationLoss):
    """``ce``: softmax cross-entropy (the paper's choice for multi-class tasks)."""

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, target.long(), label_smoothing=self.label_smoothing)


class MultiLabelBCELoss(ClassificationLoss):
    """``bce_multilabel``: one sigmoid per label; targets are multi-hot [B, C] (or class indices for C=2)."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.ndim == 1:
            target = F.one_hot(target.long(), logits.shape[-1])
        return F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype))

    def positive_probability(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().sigmoid()[:, self.positive_index]
