"""LaVIN-style arm of Tables 3 and 5 (Luo et al. 2023, "Cheap and Quick", the code base PneumoLLM grew from).

film -> CLIP ViT-L/14 (frozen, an adapter before every attention) -> the CLS token after every 4th block
(6 tokens, raw residual stream) -> neck Linear 1024->128, SiLU, Linear 128->4096 -> spliced into the prompt
"<s> Image: [6 image tokens] Question: Does the patient have pneumoconiosis? Answer:" -> LLaMA-7B
(frozen, an adapter before every attention, causal attention, LM head) -> the LM head's logits of "No" and
"Yes" at the last position: ``forward`` returns ``[logit_No, logit_Yes]`` (index 1 = pneumoconiosis).

Adapters (``adapter.kind``): ``router`` is LaVIN's mixture-of-modality adapter (MMA) in both encoders (the
default; 3,773,104 trainable parameters at full size, the paper's 3.77 M), ``repadapter`` the plain
RepAdapter of PneumoLLM, ``none`` trains the neck only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

from pneumollm.models.arms.answer_llm import (
    ANSWERS,
    PAPER_QUESTION,
    TokenizerSource,
    build_answer_lm,
)
from pneumollm.models.base import ImageClassifier
from pneumollm.models.components.adapters import (
    AdapterSite,
    AdapterSpec,
    GroupedLinear,
    attach_adapters,
    attach_repadapters,
)
from pneumollm.models.components.encoders import ClipVisionEncoder
from pneumollm.models.components.neck import Neck
from pneumollm.models.registry import register_arm

LAVIN_TEMPLATE = "{bos}Image: {image}\nQuestion: {question}\nAnswer:"
LAVIN_ADAPTER_KINDS = ("router", "repadapter", "none")


@dataclass(frozen=True)
class LavinAdapterSpec:
    """The adapters of both encoders: ``kind`` (router | repadapter | none), bottleneck ``hidden``, ``groups``
    of the up-projection, ``dropout`` on the hidden units, routing ``temperature`` (LaVIN: 10)."""

    kind: str = "router"
    hidden: int = 8
    groups: int = 2
    dropout: float = 0.1
    temperature: float = 10.0

    def __post_init__(self) -> None:
        if self.kind not in LAVIN_ADAPTER_KINDS:
            raise ValueError(f"unknown LaVIN adapter kind {self.kind!r}; choose one of {LAVIN_ADAPTER_KINDS}")
        if self.temperature <= 0:
            raise ValueError(f"the routing temperature must be positive, got {self.temperature}")

    @classmethod
    def parse(cls, spec: Mapping[str, Any] | LavinAdapterSpec | None) -> LavinAdapterSpec:
        if isinstance(spec, LavinAdapterSpec):
            return spec
        values = dict(spec or {})
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown LaVIN adapter option(s) {unknown}; known: {sorted(f.name for f in fields(cls))}")
        return cls(**values)

    def repadapter(self) -> AdapterSpec:
        """The plain RepAdapter spec with the same sizes."""
        return AdapterSpec(kind="repadapter", hidden=self.hidden, groups=self.groups, dropout=self.dropout)


class RoutedRepAdapter(nn.Module):
    """LaVIN's mixture-of-modality adapter: ``x + sum_k w_k U_k(dropout(D x))``.

    One shared down-projection D (dim -> hidden, xavier), ``num_experts`` grouped up-projections U_k
    (zero-initialised, so the adapter starts as the identity) and routing weights
    ``w = softmax(router(x[:, 0]) / temperature)`` read from each sequence's first token (the CLS token in
    CLIP, the first prompt token in the LLM). Runs in its own fp32 parameters and returns the input's dtype.
    Hand-written: no library has it. Its routing depends on the input, so it is not folded into q/k/v.
    """

    def __init__(self, dim: int, hidden: int = 8, groups: int = 2, dropout: float = 0.1,
                 temperature: float = 10.0, num_experts: int = 2) -> None:
        super().__init__()
        self.temperature = temperature
        self.down = nn.Linear(dim, hidden)
        self.dropout = nn.Dropout(dropout)
        self.experts = nn.ModuleList(GroupedLinear(hidden, dim, groups) for _ in range(num_experts))
        self.router = nn.Linear(dim, num_experts)
        nn.init.xavier_uniform_(self.down.weight)
        nn.init.zeros_(self.down.bias)

    def routing_weights(self, x: torch.Tensor) -> torch.Tensor:
        """[B, num_experts], rows summing to 1, from the first token of ``x`` [B, T, dim]."""
        return torch.softmax(self.router(x[:, 0].to(self.router.weight.dtype)) / self.temperature, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inner = x.to(self.down.weight.dtype)
        weights = self.routing_weights(inner)
        hidden = self.dropout(self.down(inner))
        delta = sum(weights[:, k, None, None] * expert(hidden) for k, expert in enumerate(self.experts))
        return x + delta.to(x.dtype)


def attach_routed_adapters(sites: Iterable[AdapterSite], dim: int, spec: LavinAdapterSpec) -> int:
    """Wrap every site's norm in ``AdaptedNorm`` with a fresh fp32 ``RoutedRepAdapter``; returns how many."""
    return attach_adapters(sites, lambda: RoutedRepAdapter(dim, spec.hidden, spec.groups, spec.dropout,
                                                           spec.temperature))


@register_arm("lavin", family="llm")
class LaVIN(ImageClassifier):
    """LaVIN-style question answering on a film; see the module docstring for the data flow.

    ``vision``: keyword arguments of ``ClipVisionEncoder`` (weights, ``multiscale``, dtype; its adapters are
    set by ``adapter``). ``llm``: keyword arguments of ``build_causal_lm`` (hub id or local folder of a
    Llama-family causal LM, or a random build). ``tokenizer``: id, folder or object; default: the LLM's
    ``name_or_path``. ``template``: the prompt, with ``{image}`` (the image tokens), optional ``{bos}`` and
    ``{question}`` (replaced by ``question``); the answer follows its last text. ``modality_token``: LaVIN's
    learnable modality embedding put before the prompt (off by default; see docs/arms.md).
    Trainable: the adapters, the neck (and the modality token).
    """

    def __init__(
        self,
        vision: Mapping[str, Any] | None = None,
        llm: Mapping[str, Any] | None = None,
        tokenizer: TokenizerSource | None = None,
        adapter: Mapping[str, Any] | LavinAdapterSpec | None = None,
        neck_dim: int = 128,
        question: str = PAPER_QUESTION,
        template: str = LAVIN_TEMPLATE,
        answers: Sequence[str] = ANSWERS,
        modality_token: bool = False,
    ) -> None:
        super().__init__()
        vision_kwargs, llm_kwargs = dict(vision or {}), dict(llm or {})
        if "adapter" in vision_kwargs:
            raise ValueError("LaVIN sets the vision adapters through its own `adapter` option, not vision.adapter")
        self.adapter_spec = LavinAdapterSpec.parse(adapter)
        plain = self.adapter_spec.kind == "repadapter"
        self.encoder = ClipVisionEncoder(**vision_kwargs, adapter=self.adapter_spec.repadapter() if plain else
                                         AdapterSpec(kind="none"))
        self.answer_lm = build_answer_lm(llm_kwargs, tokenizer, template.replace("{question}", question), answers)
        self.num_classes = len(self.answer_lm.answers)
        width = self.answer_lm.hidden_size
        self.neck = Neck(self.encoder.width, width, hidden=neck_dim)
        if self.adapter_spec.kind == "router":
            attach_routed_adapters(self.encoder.adapter_sites(), self.encoder.width, self.adapter_spec)
            attach_routed_adapters(self.answer_lm.attention_sites(), width, self.adapter_spec)
        elif plain:
            attach_repadapters(self.answer_lm.attention_sites(), width, self.adapter_spec.repadapter())
        # LaVIN's nn.Embedding default init N(0, 1); only the image-text row exists here.
        self.modality_token = nn.Parameter(torch.randn(1, 1, width)) if modality_token else None

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """The neck's output [B, d, LLM width]: the CLIP CLS tokens mapped into the LLM's embedding space."""
        return self.neck(self.encoder(images))

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """The LLM's final-normed hidden state at the answer position [B, LLM width] (the LM head's input)."""
        return self.answer_lm.last_hidden({"image": self.image_tokens(images)}, prefix=self.modality_token)

    def forward_head(self, hidden: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """The LM head's logits [B, 2] = [No, Yes]; ``pre_logits``: its input (float32)."""
        return hidden.float() if pre_logits else self.answer_lm.answer_logits(hidden)
