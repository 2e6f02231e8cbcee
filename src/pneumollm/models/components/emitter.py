"""The information emitter: the additive attention mask used in every layer of the LLM trunk."""

from __future__ import annotations

import torch

EMITTER_MODES = ("emitter", "full")


class InformationEmitter:
    """Builds the (1, 1, d+m, d+m) float additive attention mask for d source and m diagnosis tokens.

    ``emitter``: every column of a diagnosis token is blocked (the dtype's most negative value), so
    source tokens attend bidirectionally among themselves only and each diagnosis token reads the
    source tokens only. ``full``: all zeros (full bidirectional attention). Never causal. Each row keeps
    the d >= 1 source columns open, so the softmax never sees a fully blocked row (no NaN); with
    m = 0 both modes give all zeros.
    """

    def __init__(self, mode: str = "emitter") -> None:
        if mode not in EMITTER_MODES:
            raise ValueError(f"unknown emitter mode {mode!r}; choose one of {EMITTER_MODES}")
        self.mode = mode

    def blocked(self, num_source: int, num_diagnosis: int, device: torch.device | str | None = None) -> torch.Tensor:
        """Boolean [d+m, d+m]: True where query i may not attend to key j."""
        if num_source < 1:
            raise ValueError(f"the trunk needs at least one source token, got {num_source}")
        total = num_source + num_diagnosis
        blocked = torch.zeros(total, total, dtype=torch.bool, device=device)
        if self.mode == "emitter":
            blocked[:, num_source:] = True
        return blocked

    def __call__(self, num_source: int, num_diagnosis: int, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> torch.Tensor:
        blocked = self.blocked(num_source, num_diagnosis, device)
        mask = torch.zeros(blocked.shape, dtype=dtype, device=device)
        return mask.masked_fill(blocked, torch.finfo(dtype).min)[None, None]

    def __repr__(self) -> str:
        return f"InformationEmitter(mode={self.mode!r})"
