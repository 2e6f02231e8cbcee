"""Which blocks of a vision transformer give the source tokens, and how one block's states become one token.

The paper takes the [CLS] token after every fourth of CLIP ViT-L/14's 24 blocks (6 tokens). Two ways to name the
blocks, for any depth L (blocks counted from 1; block L is the last):

- ``multiscale: s`` -> blocks s, 2s, ... <= L (the paper's ``multiscale: 4``; L/s tokens);
- ``num_tokens: n`` -> n evenly spaced blocks ending at the last one: block ``round(k L / n)`` for k = 1..n, halves
  rounded up, i.e. ``(2 k L + n) // (2 n)`` in integers. L = 24, n = 6 gives 4, 8, ..., 24 (the paper's blocks);
  L = 12 gives 2, 4, ..., 12; L = 27 gives 5, 9, 14, 18, 23, 27; L = 32 gives 5, 11, 16, 21, 27, 32.

A token is ``cls`` (the first position of the block's output, the residual stream before any final norm) or
``patch_mean`` (the mean of the block's patch tokens, class and register tokens left out), the token of encoders
without a class token such as SigLIP.
"""

from __future__ import annotations

import torch

TOKEN_KINDS = ("cls", "patch_mean")


def multiscale_indices(num_blocks: int, multiscale: int) -> list[int]:
    """Block counts after which the CLS token is taken: multiscale, 2*multiscale, ... <= num_blocks."""
    if multiscale < 1 or multiscale > num_blocks:
        raise ValueError(f"multiscale must be between 1 and the number of blocks ({num_blocks}), got {multiscale}")
    return list(range(multiscale, num_blocks + 1, multiscale))


def evenly_spaced_blocks(num_blocks: int, num_tokens: int) -> list[int]:
    """``num_tokens`` evenly spaced blocks ending at the last: ``round(k * num_blocks / num_tokens)``, k = 1..n,
    halves rounded up (strictly increasing because the spacing is at least one block)."""
    if num_tokens < 1 or num_tokens > num_blocks:
        raise ValueError(f"num_tokens must be between 1 and the number of blocks ({num_blocks}), got {num_tokens}")
    return [(2 * k * num_blocks + num_tokens) // (2 * num_tokens) for k in range(1, num_tokens + 1)]


def token_blocks(num_blocks: int, multiscale: int | None = None, num_tokens: int | None = None) -> list[int]:
    """The blocks chosen by ``multiscale`` or ``num_tokens`` (both given: they must choose the same blocks)."""
    if multiscale is None and num_tokens is None:
        raise ValueError("set multiscale (every s-th block) or num_tokens (n evenly spaced blocks)")
    by_step = multiscale_indices(num_blocks, multiscale) if multiscale is not None else None
    by_count = evenly_spaced_blocks(num_blocks, num_tokens) if num_tokens is not None else None
    if by_step is not None and by_count is not None and by_step != by_count:
        raise ValueError(f"multiscale={multiscale} (blocks {by_step}) and num_tokens={num_tokens} (blocks "
                         f"{by_count}) disagree for {num_blocks} blocks; set one of them to null")
    return by_step if by_step is not None else by_count  # type: ignore[return-value]


def check_token_kind(token: str, num_prefix_tokens: int, what: str) -> str:
    """``token`` if ``what`` can give it (``cls`` needs a class token), else a ``ValueError``."""
    if token not in TOKEN_KINDS:
        raise ValueError(f"unknown token {token!r}; choose one of {TOKEN_KINDS}")
    if token == "cls" and num_prefix_tokens < 1:
        raise ValueError(f"{what} has no CLS token; use token: patch_mean (the mean of the patch tokens)")
    return token


def pool_block(states: torch.Tensor, token: str, num_prefix_tokens: int) -> torch.Tensor:
    """One block's output [B, T, width] -> its token [B, width] in float32 (the patch mean is taken in float32)."""
    if token == "cls":
        return states[:, 0].float()
    return states[:, num_prefix_tokens:].float().mean(dim=1)
