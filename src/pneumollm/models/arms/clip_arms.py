"""The CLIP family of the paper's Table 3: zero-shot CLIP, linear probe, CoOp and CoCoOp.

All four keep CLIP (ViT-L/14 in the paper, ``openai/clip-vit-large-patch14``) frozen and return two
logits per film (index 0 normal, index 1 pneumoconiosis). Text labels follow the paper: "Normal chest
radiograph" and "Pneumoconiosis chest radiograph".
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pneumollm.models.arms.clip_backbone import (
    CLIP_VIT_L14,
    PAPER_PROMPTS,
    ClipSource,
    FrozenCLIP,
    TokenizerSource,
    cosine_logits,
)
from pneumollm.models.arms.prompt_learners import PromptLearner
from pneumollm.models.base import FrozenPrefix, ImageClassifier, module_settings
from pneumollm.models.registry import register_arm


class CLIPClassifier(ImageClassifier):
    """A frozen CLIP whose image embedding [B, P] is the body's output (``forward_features``) and the frozen
    prefix (its embeddings can be cached per film); subclasses define the head on it."""

    clip: FrozenCLIP

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP's image embeddings [B, P] (nothing before them trains)."""
        with torch.no_grad():
            return self.clip.encode_image(images)

    def frozen_prefix(self) -> FrozenPrefix:
        """CLIP's frozen image path, the prefix every CLIP arm shares."""
        embedding = self.clip.image_embedding()
        return FrozenPrefix(embedding, module_settings(embedding))

    def forward_from_prefix(self, embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, head-input features) from CLIP's image embeddings [B, P]."""
        return self.head_outputs(embedding)


@register_arm("clip_zero_shot", family="clip")
class ZeroShotCLIP(CLIPClassifier):
    """logit_c = CLIP's logit scale x cos(image embedding, text embedding of prompt c); nothing trains."""

    def __init__(
        self,
        clip: ClipSource = CLIP_VIT_L14,
        tokenizer: TokenizerSource = None,
        prompts: Sequence[str] = PAPER_PROMPTS,
        normalization: str = "clip",
        dtype: str | None = None,
    ) -> None:
        super().__init__()
        self.clip = FrozenCLIP(clip, tokenizer, normalization, dtype)
        self.prompts = tuple(prompts)
        self.num_classes = len(self.prompts)
        self.register_buffer("prompt_ids", self.clip.tokenize(self.prompts), persistent=False)

    def text_features(self) -> torch.Tensor:
        """Projected embeddings of the class prompts [C, P]."""
        return self.clip.encode_text(self.prompt_ids)

    def forward_head(self, embedding: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Scaled cosines with the prompts' embeddings; ``pre_logits``: the L2-normalised image embedding."""
        if pre_logits:
            return F.normalize(embedding, dim=-1)
        return cosine_logits(embedding, self.text_features(), self.clip.logit_scale())


@register_arm("clip_linear_probe", family="clip")
class LinearProbeCLIP(CLIPClassifier):
    """Logistic regression on frozen CLIP image embeddings: logits = [0, w . x + b].

    A single logit ``z`` on the 768-d embedding (769 parameters, the paper's 0.0008 M); the fixed 0
    for "normal" makes the two-logit softmax equal ``sigmoid(z)``, i.e. exactly a logistic regression,
    and the BCE on the two logits differs from the logistic loss only by a constant. ``normalize_features``
    L2-normalises the embeddings first (CLIP's own probe used the raw embeddings; the default here).
    Stages (``num_classes`` > 2): multinomial logistic regression with stage 0 as the reference (logits
    ``[0, z_1, ..., z_{C-1}]``); findings (``task="multilabel"``): one logistic regression per finding.
    """

    def __init__(
        self,
        clip: ClipSource = CLIP_VIT_L14,
        normalize_features: bool = False,
        normalization: str = "clip",
        dtype: str | None = None,
        tokenizer: TokenizerSource = None,
        num_classes: int = 2,
        task: str = "binary",
    ) -> None:
        super().__init__()
        self.clip = FrozenCLIP(clip, tokenizer, normalization, dtype)
        self.normalize_features = normalize_features
        self.num_classes = num_classes
        self.reference_logit = task != "multilabel"  # a softmax over classes: the first one's logit fixed at 0
        self.probe = nn.Linear(self.clip.embed_dim, num_classes - 1 if self.reference_logit else num_classes)
        nn.init.zeros_(self.probe.weight)
        nn.init.zeros_(self.probe.bias)

    def forward_head(self, embedding: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """The probe's logits; ``pre_logits``: its input (L2-normalised when ``normalize_features``)."""
        features = F.normalize(embedding, dim=-1) if self.normalize_features else embedding
        if pre_logits:
            return features
        z = self.probe(features)
        if not self.reference_logit:
            return z
        return torch.cat([torch.zeros_like(z[:, :1]), z], dim=1)


@register_arm("clip_coop", family="clip")
class CoOpCLIP(CLIPClassifier):
    """CoOp: ``n_ctx`` learnable context vectors before the class words on CLIP's text side; CLIP frozen.

    ``class_names`` default to the paper's text labels, so each prompt reads
    "v_1 .. v_4 Normal chest radiograph." and "v_1 .. v_4 Pneumoconiosis chest radiograph.".
    ``ctx_init`` initialises the context from the token embeddings of a phrase (e.g. "a photo of a");
    ``None`` draws it from N(0, 0.02) (CoOp's default). ``meta_net_reduction`` adds CoCoOp's meta-net
    (hidden width P / reduction); ``None`` is plain CoOp.
    """

    def __init__(
        self,
        clip: ClipSource = CLIP_VIT_L14,
        tokenizer: TokenizerSource = None,
        class_names: Sequence[str] = PAPER_PROMPTS,
        n_ctx: int = 4,
        ctx_init: str | None = None,
        normalization: str = "clip",
        dtype: str | None = None,
        meta_net_reduction: int | None = None,
    ) -> None:
        super().__init__()
        self.clip = FrozenCLIP(clip, tokenizer, normalization, dtype)
        self.num_classes = len(class_names)
        meta = {} if meta_net_reduction is None else {
            "meta_net_input_dim": self.clip.embed_dim, "meta_net_reduction": meta_net_reduction}
        self.prompt_learner = PromptLearner(
            self.clip.token_embedding, self.clip.tokenizer, class_names, n_ctx=n_ctx, ctx_init=ctx_init,
            max_length=self.clip.model.config.text_config.max_position_embeddings, **meta,
        )

    def text_features(self, image_features: torch.Tensor | None = None) -> torch.Tensor:
        """Class text embeddings: [C, P] (CoOp) or [B, C, P] (CoCoOp, conditioned on the images)."""
        learner = self.prompt_learner
        embeds = learner(image_features)
        if embeds.dim() == 3:
            return self.clip.encode_text_embeddings(embeds, learner.eos_positions)
        batch, n_cls = embeds.shape[:2]
        flat = self.clip.encode_text_embeddings(embeds.flatten(0, 1), learner.eos_positions.repeat(batch))
        return flat.view(batch, n_cls, -1)

    def forward_head(self, embedding: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Scaled cosines with the learnt prompts' embeddings; ``pre_logits``: the normalised image embedding."""
        image = F.normalize(embedding, dim=-1)
        if pre_logits:
            return image
        return cosine_logits(image, self.text_features(image), self.clip.logit_scale())


@register_arm("clip_cocoop", family="clip")
class CoCoOpCLIP(CoOpCLIP):
    """CoCoOp: CoOp plus a meta-net (Linear P -> P/16, ReLU, Linear -> width) on the normalised image
    embedding whose output shifts every context vector, so each film gets its own prompts.

    Defaults follow CoCoOp: ``n_ctx=4`` initialised from "a photo of a", hidden width P / 16
    (``meta_net_reduction``).
    """

    def __init__(
        self,
        clip: ClipSource = CLIP_VIT_L14,
        tokenizer: TokenizerSource = None,
        class_names: Sequence[str] = PAPER_PROMPTS,
        n_ctx: int = 4,
        ctx_init: str | None = "a photo of a",
        normalization: str = "clip",
        dtype: str | None = None,
        meta_net_reduction: int = 16,
    ) -> None:
        super().__init__(clip, tokenizer, class_names, n_ctx, ctx_init, normalization, dtype, meta_net_reduction)
