"""BLIP-2-style arm of Table 3 (Li et al. 2023): frozen image encoder -> Q-Former -> frozen LLM answering yes/no.

film -> CLIP ViT-L/14 vision tower (frozen; its last block removed, as BLIP-2 does: the features are all 257
tokens of the second-to-last block's output) -> LayerNorm (BLIP-2's ``ln_vision``, trainable) -> Q-Former
(transformers' ``Blip2QFormerModel``, BERT-base sized: 12 layers, width 768, cross-attention to the image
features every 2nd layer, 32 learnable query tokens; trainable) -> Linear 768 -> LLM width -> the 32 query
outputs as a soft prompt before "<s> Question: Does the patient have pneumoconiosis? Answer:" -> LLaMA-7B
(frozen, causal) -> the LM head's logits of "No" and "Yes" at the last position (index 1 = pneumoconiosis).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from transformers import Blip2QFormerConfig, Blip2QFormerModel, CLIPVisionConfig, CLIPVisionModel

from pneumollm.models.arms.answer_llm import (
    ANSWERS,
    PAPER_QUESTION,
    TokenizerSource,
    build_answer_lm,
)
from pneumollm.models.base import ImageClassifier, InputNormalizer
from pneumollm.models.components.encoders import CLIP_ARCHITECTURES, CLIP_VISION_RULES
from pneumollm.models.components.pretrained import load_or_build
from pneumollm.models.registry import register_arm

BLIP2_TEMPLATE = "{image}{bos}Question: {question} Answer:"
# BERT-base, as BLIP-2's Q-Former (transformers' Blip2QFormerConfig defaults); encoder_hidden_size follows the
# image encoder's width.
QFORMER_BASE: dict[str, Any] = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "cross_attention_frequency": 2,
}


class FrozenClipFeatures(nn.Module):
    """A frozen CLIP vision tower cut after ``feature_layer``: films [B, 1, H, W] -> all tokens [B, 1+P, width].

    ``feature_layer`` indexes the hidden states like transformers' ``output_hidden_states`` (0 = embeddings,
    -1 = last block; BLIP-2: -2); the blocks after it are dropped. ``pretrained: true`` loads ``name_or_path``
    (hub id or local folder; a full CLIP checkpoint works); ``pretrained: false`` builds ``architecture``
    (``vit_l14`` or ``tiny``) from ``init_seed``. Features are the raw residual stream (float32).
    """

    def __init__(
        self,
        name_or_path: str | os.PathLike[str] | None = "openai/clip-vit-large-patch14",
        pretrained: bool = True,
        architecture: str = "vit_l14",
        config_overrides: Mapping[str, Any] | None = None,
        feature_layer: int = -2,
        normalization: str | Sequence[Sequence[float]] = "clip",
        frozen_dtype: str | torch.dtype = "auto",
        attn_implementation: str = "sdpa",
        init_seed: int | None = 0,
    ) -> None:
        super().__init__()
        model = load_or_build(CLIPVisionModel, CLIPVisionConfig, CLIP_ARCHITECTURES, pretrained=pretrained,
                              name_or_path=name_or_path, architecture=architecture,
                              config_overrides=config_overrides, frozen_dtype=frozen_dtype,
                              attn_implementation=attn_implementation, init_seed=init_seed,
                              rules=CLIP_VISION_RULES).model
        tower = getattr(model, "vision_model", model)  # transformers 4.x nests the tower, 5.x does not
        num_blocks = len(tower.encoder.layers)
        kept = feature_layer if feature_layer >= 0 else num_blocks + 1 + feature_layer
        if not 1 <= kept <= num_blocks:
            raise ValueError(f"feature_layer {feature_layer} must pick a block output (1..{num_blocks} or "
                             f"-{num_blocks}..-1)")
        tower.encoder.layers = tower.encoder.layers[:kept]
        self.num_blocks = kept
        self.model = model
        self.width = model.config.hidden_size
        self.normalize = InputNormalizer(normalization, channels=model.config.num_channels)

    @property
    def frozen_dtype(self) -> torch.dtype:
        tower = getattr(self.model, "vision_model", self.model)
        return tower.embeddings.patch_embedding.weight.dtype

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = self.normalize(images.float()).to(self.frozen_dtype)
        return self.model(pixel_values=pixels).last_hidden_state.float()


@register_arm("blip2", family="llm")
class BLIP2(ImageClassifier):
    """BLIP-2-style question answering on a film; see the module docstring for the data flow.

    ``vision``: keyword arguments of ``FrozenClipFeatures``. ``qformer``: fields of ``Blip2QFormerConfig``
    over ``QFORMER_BASE`` (``encoder_hidden_size`` is set to the image features' width). ``llm``/``tokenizer``/
    ``template``/``question``/``answers`` as in the LaVIN arm (``{image}`` = the projected query outputs).
    Trainable: ``ln_vision``, the Q-Former, the query tokens and the projection; the Q-Former starts from
    transformers' BERT-style random initialisation (BLIP-2's pre-trained Q-Former is not loaded, see
    docs/arms.md).
    """

    def __init__(
        self,
        vision: Mapping[str, Any] | None = None,
        llm: Mapping[str, Any] | None = None,
        tokenizer: TokenizerSource | None = None,
        qformer: Mapping[str, Any] | None = None,
        num_query_tokens: int = 32,
        question: str = PAPER_QUESTION,
        template: str = BLIP2_TEMPLATE,
        answers: Sequence[str] = ANSWERS,
    ) -> None:
        super().__init__()
        llm_kwargs = dict(llm or {})
        self.encoder = FrozenClipFeatures(**dict(vision or {}))
        width = self.encoder.width
        self.ln_vision = nn.LayerNorm(width)
        overrides = dict(qformer or {})
        if "encoder_hidden_size" in overrides:
            raise ValueError("qformer.encoder_hidden_size is set from the image encoder's width")
        config = Blip2QFormerConfig(**{**QFORMER_BASE, **overrides, "encoder_hidden_size": width})
        self.qformer = Blip2QFormerModel(config)
        self.query_tokens = nn.Parameter(torch.empty(1, num_query_tokens, config.hidden_size))
        nn.init.normal_(self.query_tokens, std=config.initializer_range)  # as BLIP-2
        self.answer_lm = build_answer_lm(llm_kwargs, tokenizer, template.replace("{question}", question), answers)
        self.num_classes = len(self.answer_lm.answers)
        self.projection = nn.Linear(config.hidden_size, self.answer_lm.hidden_size)

    def query_outputs(self, images: torch.Tensor) -> torch.Tensor:
        """The Q-Former's outputs for the learnt queries [B, num_query_tokens, Q-Former width]."""
        features = self.ln_vision(self.encoder(images))
        queries = self.query_tokens.expand(features.shape[0], -1, -1)
        return self.qformer(query_embeds=queries, encoder_hidden_states=features).last_hidden_state

    def soft_prompt(self, images: torch.Tensor) -> torch.Tensor:
        """The projected query outputs [B, num_query_tokens, LLM width] that precede the question."""
        return self.projection(self.query_outputs(images))

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """The LLM's final-normed hidden state at the answer position [B, LLM width] (the LM head's input)."""
        return self.answer_lm.last_hidden({"image": self.soft_prompt(images)})

    def forward_head(self, hidden: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """The LM head's logits [B, 2] = [No, Yes]; ``pre_logits``: its input (float32)."""
        return hidden.float() if pre_logits else self.answer_lm.answer_logits(hidden)
