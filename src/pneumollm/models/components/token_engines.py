"""Token engines: from the d source tokens [B, d, n] make m diagnosis tokens [B, m, n].

``ContextualMultiTokenEngine`` is the paper's CMTE; ``CoOpTokens`` and ``CoCoOpTokens`` are the
prompt-learning alternatives of its ablation (Table 6), ``NoTokens`` adds none.
"""

from __future__ import annotations

import torch
from torch import nn

from pneumollm.models.components.frozen import freeze as freeze_module


class TokenEngine(nn.Module):
    """Source tokens [B, d, width] -> diagnosis tokens [B, num_tokens, width]."""

    width: int
    num_tokens: int

    def __init__(self, width: int, m: int) -> None:
        super().__init__()
        if m < 0:
            raise ValueError(f"the number of diagnosis tokens m must be >= 0, got {m}")
        self.width, self.num_tokens = width, m

    def _empty(self, source: torch.Tensor) -> torch.Tensor:
        return source[:, :0]


class ContextualMultiTokenEngine(TokenEngine):
    """CMTE: ``A = softmax_d(MLP(X))`` [B, d, m], ``X_hat = A^T X``: each diagnosis token is a convex
    combination of the source tokens.

    ``freeze: true`` keeps the MLP at its random initialisation, reproducing the reference code's bug.
    """

    def __init__(self, width: int, m: int = 4, hidden: int = 12, freeze: bool = False) -> None:
        super().__init__(width, m)
        self.frozen = freeze
        self.scorer = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, m)) if m else None
        if freeze and self.scorer is not None:
            freeze_module(self.scorer)

    def mixing_weights(self, source: torch.Tensor) -> torch.Tensor:
        """The contextual attention map A [B, d, m]; every column sums to 1 over the d source tokens."""
        if self.scorer is None:
            return source.new_zeros(*source.shape[:2], 0)
        return torch.softmax(self.scorer(source), dim=1)

    def forward(self, source: torch.Tensor) -> torch.Tensor:
        if self.scorer is None:
            return self._empty(source)
        return self.mixing_weights(source).transpose(1, 2) @ source


class CoOpTokens(TokenEngine):
    """CoOp-style engine: m free learnable tokens shared by every image (N(0, init_std) at start)."""

    def __init__(self, width: int, m: int = 4, init_std: float = 0.02) -> None:
        super().__init__(width, m)
        self.tokens = nn.Parameter(torch.randn(m, width) * init_std)

    def forward(self, source: torch.Tensor) -> torch.Tensor:
        return self.tokens.to(source.dtype).expand(source.shape[0], -1, -1)


class CoCoOpTokens(CoOpTokens):
    """CoCoOp-style engine: the free tokens plus an image-conditioned shift from a meta-net
    (Linear n -> n/reduction, ReLU, Linear -> n) applied to the mean of the source tokens."""

    def __init__(self, width: int, m: int = 4, init_std: float = 0.02, reduction: int = 16) -> None:
        super().__init__(width, m, init_std)
        hidden = max(1, width // reduction)
        self.meta_net = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, width))

    def forward(self, source: torch.Tensor) -> torch.Tensor:
        shift = self.meta_net(source.mean(dim=1))
        return super().forward(source) + shift.unsqueeze(1)


class NoTokens(TokenEngine):
    """No diagnosis tokens (d' = d)."""

    def __init__(self, width: int) -> None:
        super().__init__(width, 0)

    def forward(self, source: torch.Tensor) -> torch.Tensor:
        return self._empty(source)
