"""Classification heads reading the trunk's output tokens."""

from __future__ import annotations

import torch
from torch import nn


class MeanLinearHead(nn.Module):
    """Mean over all tokens, then Linear(in_features -> num_classes, no bias): logits [B, num_classes]."""

    def __init__(self, in_features: int, num_classes: int = 2) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, num_classes, bias=False)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """The classifier's input [B, in_features]."""
        return tokens.mean(dim=1)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from the pooled features that ``pool`` returns."""
        return self.linear(features)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.classify(self.pool(tokens))
