"""The visual neck: Linear(n -> hidden), SiLU, Linear(hidden -> trunk width), on every token."""

from __future__ import annotations

import torch
from torch import nn


class Neck(nn.Module):
    """Maps tokens [B, T, in_features] to the trunk's width [B, T, out_features] through a bottleneck."""

    def __init__(self, in_features: int, out_features: int, hidden: int = 128) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(in_features, hidden), nn.SiLU(), nn.Linear(hidden, out_features))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.layers(tokens)
