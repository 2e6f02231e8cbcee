"""PneumoLLM: frozen vision encoder -> token engine -> neck -> frozen LLM trunk (emitter mask) -> head."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from pneumollm.models.base import FrozenPrefix, ImageClassifier, module_settings
from pneumollm.models.components.emitter import InformationEmitter
from pneumollm.models.components.encoders import VisionEncoder
from pneumollm.models.components.head import MeanLinearHead
from pneumollm.models.components.llm import LanguageTrunk
from pneumollm.models.components.neck import Neck
from pneumollm.models.components.token_engines import NoTokens, TokenEngine

TokenEngineFactory = Callable[..., TokenEngine]
NeckFactory = Callable[..., nn.Module]
HeadFactory = Callable[..., nn.Module]


class PneumoLLM(ImageClassifier):
    """The paper's model, assembled from interchangeable parts.

    ``encoder`` and ``llm`` are built modules; ``token_engine``, ``neck`` and ``head`` may be factories
    (Hydra ``_partial_: true``) that this class calls with the sizes it wires itself:
    token engine width = encoder width, neck = encoder width -> trunk width (``Neck``: through a
    bottleneck of 128 by default), head input = trunk width. Only adapters, token engine, neck and head
    require gradients (plus anything an encoder declares trainable, e.g. the conv stem).
    """

    def __init__(
        self,
        encoder: VisionEncoder,
        llm: LanguageTrunk,
        token_engine: TokenEngine | TokenEngineFactory | None = None,
        emitter: InformationEmitter | None = None,
        head: nn.Module | HeadFactory | None = None,
        neck: nn.Module | NeckFactory | None = None,
        num_classes: int = 2,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.encoder = encoder
        self.token_engine = _build(token_engine, TokenEngine, NoTokens, width=encoder.width)
        if self.token_engine.width != encoder.width:
            raise ValueError(f"token engine width {self.token_engine.width} != encoder width {encoder.width}")
        self.neck = _build(neck, nn.Module, Neck, in_features=encoder.width, out_features=llm.hidden_size)
        self.llm = llm
        self.emitter = emitter if emitter is not None else InformationEmitter("emitter")
        self.head = _build(head, nn.Module, MeanLinearHead, in_features=llm.hidden_size, num_classes=num_classes)

    @property
    def num_source_tokens(self) -> int:
        return self.encoder.num_tokens

    @property
    def num_diagnosis_tokens(self) -> int:
        return self.token_engine.num_tokens

    def trunk_input(self, images: torch.Tensor) -> torch.Tensor:
        """The neck's output Y [B, d+m, trunk width]: source tokens, then diagnosis tokens."""
        return self._neck_output(self.encoder(images))

    def _neck_output(self, source: torch.Tensor) -> torch.Tensor:
        return self.neck(torch.cat([source, self.token_engine(source)], dim=1))

    def trunk_output(self, trunk_input: torch.Tensor) -> torch.Tensor:
        """Run the trunk with the emitter's mask on Y [B, d+m, width] -> Z [B, d+m, width]."""
        mask = None
        if self.llm.uses_mask:
            mask = self.emitter(self.num_source_tokens, trunk_input.shape[1] - self.num_source_tokens,
                                dtype=self.llm.mask_dtype(trunk_input.device), device=trunk_input.device)
        return self.llm(trunk_input, mask)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """The trunk's output Z [B, d+m, width] that the head reads."""
        return self.trunk_output(self.trunk_input(images))

    def forward_head(self, tokens: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """The head's logits; ``pre_logits``: its pooled input [B, width]."""
        return self.head.pool(tokens) if pre_logits else self.head(tokens)

    def frozen_prefix(self) -> FrozenPrefix | None:
        """The encoder, when nothing in it trains (no adapters, a frozen backbone): its source tokens."""
        if any(p.requires_grad for p in self.encoder.parameters()):
            return None
        return FrozenPrefix(self.encoder, module_settings(self.encoder))

    def forward_from_prefix(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, head-input features) from the encoder's source tokens [B, d, width]."""
        return self.head_outputs(self.trunk_output(self._neck_output(source)))

    def fold_adapters(self) -> int:
        """Merge every adapter into the frozen weights for inference (eval-mode function unchanged)."""
        return self.encoder.fold_adapters() + self.llm.fold_adapters()


def _build(part: Any, kind: type, default: Callable[..., Any], **sizes: Any) -> Any:
    if part is None:
        part = default
    if isinstance(part, kind) and isinstance(part, nn.Module):
        return part
    if callable(part):
        return part(**sizes)
    raise TypeError(f"expected a {kind.__name__} or a factory for one, got {type(part).__name__}")
