"""Learnable text prompts for frozen CLIP: CoOp (Zhou et al. 2022b) and CoCoOp (Zhou et al. 2022a).

Every class prompt reads ``[SOS] v_1 ... v_n <class words> . [EOS]``: the ``n`` context vectors ``v``
are shared by all classes (CoOp's unified context, class token at the end) and sit in CLIP's token
embedding space; the other slots keep their frozen token embeddings. CoCoOp adds an image-conditioned
meta-net (Linear d -> d/16, ReLU, Linear d/16 -> width) whose output shifts every context vector.
Written by hand: no maintained library provides these for Hugging Face CLIP.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase


class PromptLearner(nn.Module):
    """Builds the token embeddings [C, L, width] (CoOp) or [B, C, L, width] (CoCoOp) of the class prompts."""

    def __init__(
        self,
        token_embedding: nn.Embedding,
        tokenizer: PreTrainedTokenizerBase,
        class_names: Sequence[str],
        n_ctx: int = 4,
        ctx_init: str | None = None,
        ctx_std: float = 0.02,
        meta_net_input_dim: int | None = None,
        meta_net_reduction: int = 16,
        max_length: int | None = None,
    ) -> None:
        super().__init__()
        width = token_embedding.embedding_dim
        bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        if bos is None or eos is None:
            raise ValueError("the CLIP tokenizer needs start and end tokens (bos_token_id, eos_token_id)")

        def words(text: str) -> list[int]:
            return list(tokenizer(text, add_special_tokens=False)["input_ids"])

        init_ids: list[int] = []
        if ctx_init:
            init_ids = words(ctx_init)
            if n_ctx != len(init_ids):
                raise ValueError(f"ctx_init {ctx_init!r} is {len(init_ids)} tokens but n_ctx={n_ctx}")
        if n_ctx < 1:
            raise ValueError(f"n_ctx must be at least 1 (got {n_ctx})")

        # The context slots hold a placeholder id (the start token); their embeddings are replaced.
        class_ids = [words(f"{name}.") for name in class_names]
        rows = [[bos, *[bos] * n_ctx, *ids, eos] for ids in class_ids]
        length = max(len(r) for r in rows)
        if max_length is not None and length > max_length:
            raise ValueError(f"class prompts need {length} tokens but the text tower takes {max_length}")
        token_ids = torch.tensor([r + [pad] * (length - len(r)) for r in rows])
        self.n_ctx = n_ctx
        self.register_buffer("token_ids", token_ids, persistent=False)
        self.register_buffer("eos_positions", torch.tensor([len(r) - 1 for r in rows]), persistent=False)
        # Frozen embeddings of the fixed slots, kept as constants (CLIP is frozen).
        with torch.no_grad():
            embeds = token_embedding(token_ids)
        self.register_buffer("prefix", embeds[:, :1].clone(), persistent=False)
        self.register_buffer("suffix", embeds[:, 1 + n_ctx:].clone(), persistent=False)

        if init_ids:
            with torch.no_grad():
                ctx = token_embedding(torch.tensor(init_ids, device=token_embedding.weight.device)).float().clone()
        else:
            ctx = torch.empty(n_ctx, width, device=token_embedding.weight.device).normal_(0.0, ctx_std)
        self.ctx = nn.Parameter(ctx)

        self.meta_net: nn.Sequential | None = None
        if meta_net_input_dim is not None:
            hidden = meta_net_input_dim // meta_net_reduction
            self.meta_net = nn.Sequential(
                nn.Linear(meta_net_input_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, width)
            )

    @property
    def num_classes(self) -> int:
        return self.token_ids.shape[0]

    def forward(self, image_features: torch.Tensor | None = None) -> torch.Tensor:
        """Prompt embeddings: [C, L, width], or [B, C, L, width] when a meta-net shifts the context."""
        n_cls = self.num_classes
        prefix, suffix = self.prefix.to(self.ctx.dtype), self.suffix.to(self.ctx.dtype)
        if self.meta_net is None:
            ctx = self.ctx.unsqueeze(0).expand(n_cls, -1, -1)
            return torch.cat([prefix, ctx, suffix], dim=1)
        if image_features is None:
            raise ValueError("CoCoOp prompts need the image features for their meta-net")
        shift = self.meta_net(image_features)  # [B, width]
        ctx = self.ctx.unsqueeze(0) + shift.unsqueeze(1)  # [B, n_ctx, width]
        batch = ctx.shape[0]
        ctx = ctx.unsqueeze(1).expand(-1, n_cls, -1, -1)
        return torch.cat([prefix.expand(batch, -1, -1, -1), ctx, suffix.expand(batch, -1, -1, -1)], dim=2)
