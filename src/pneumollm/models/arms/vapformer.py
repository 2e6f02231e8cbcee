"""VAPFormer arm (Kang et al. 2023, "Visual-attribute prompt learning for progressive MCI prediction").

The original couples a visual transformer over brain MRI with an attribute branch over tabular clinical
data, pre-trains without prompts, then prompt-tunes with the backbone frozen: learnable visual prompts,
attribute prompts and a *global prompt token*. Its code for this exact setting is not available to us,
so this module implements the design from the public description on a frozen 2-D ViT-B/16 (timm);
every choice below is ours and is listed in docs/arms.md:

1. Backbone: timm ``vit_base_patch16_224`` (ImageNet weights when available), frozen, eval mode.
2. Visual prompts: *deep* prompts (VPT-deep): ``num_visual_prompts`` learnable tokens per block, inserted
   after the CLS token and replaced by the next block's own prompts after every block.
3. Attribute prompts: chest films come without tabular attributes, so the attribute branch has no input
   here; its prompts become a second group of ``num_attribute_prompts`` deep learnable tokens per block,
   kept apart from the visual ones (own initialisation, own switch; ``0`` removes them).
4. Global prompt token: one learnable token inserted once at the input and carried through all blocks
   (its state evolves like the CLS token's), giving every block the same global guidance, whereas the
   deep prompts are renewed per block.
5. Head: Linear(768 -> 2) on the frozen final LayerNorm of the CLS token (VPT's classifier).
6. Prompt initialisation: uniform in +-sqrt(6 / (3 * patch^2 + dim)) (VPT's Xavier-style bound); no
   positional embeddings on prompts.

Trainable parameters with the defaults (ViT-B/16: 12 blocks, width 768):
12 x (100 + 30) x 768 = 1,198,080 (deep visual + attribute prompts) + 768 (global token)
+ 768 x 2 + 2 = 1,538 (head) = 1,200,386, i.e. the paper's 1.20 M.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from pneumollm.models.arms.timm_classifier import create_timm_model
from pneumollm.models.base import ImageClassifier, InputNormalizer
from pneumollm.models.registry import register_arm


@register_arm("vapformer")
class VAPFormer(ImageClassifier):
    """Frozen ViT with deep visual + attribute prompts, a carried global prompt token and a linear head."""

    def __init__(
        self,
        backbone: str = "vit_base_patch16_224",
        num_classes: int = 2,
        num_visual_prompts: int = 100,
        num_attribute_prompts: int = 30,
        global_prompt: bool = True,
        prompt_dropout: float = 0.0,
        pretrained: bool = False,
        checkpoint_path: str | None = None,
        normalization: str = "imagenet",
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.normalize = InputNormalizer(normalization)
        self.vit = create_timm_model(backbone, 0, pretrained, checkpoint_path, **dict(model_kwargs or {}))
        if not hasattr(self.vit, "blocks") or not hasattr(self.vit, "_pos_embed"):
            raise ValueError(f"VAPFormer needs a timm VisionTransformer backbone, got {backbone!r}")
        self.vit.requires_grad_(False)
        self.vit.eval()

        depth, dim = len(self.vit.blocks), self.vit.embed_dim
        patch = self.vit.patch_embed.patch_size
        bound = math.sqrt(6.0 / float(3 * patch[0] * patch[1] + dim))
        self.visual_prompts = nn.Parameter(torch.empty(depth, num_visual_prompts, dim).uniform_(-bound, bound))
        self.attribute_prompts = nn.Parameter(
            torch.empty(depth, num_attribute_prompts, dim).uniform_(-bound, bound))
        self.global_prompt = (nn.Parameter(torch.empty(1, 1, dim).uniform_(-bound, bound))
                              if global_prompt else None)
        self.prompt_dropout = nn.Dropout(prompt_dropout)
        self.head = nn.Linear(dim, num_classes)

    def train(self, mode: bool = True) -> VAPFormer:
        super().train(mode)
        self.vit.eval()  # frozen backbone: dropout / drop-path stay off
        return self

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """The final-LayerNorm CLS token [B, dim] that the head reads."""
        vit = self.vit
        x = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(self.normalize(images)))))
        batch, n_prefix = x.shape[0], vit.num_prefix_tokens
        prefix, patches = x[:, :n_prefix], x[:, n_prefix:]
        carried = [self.global_prompt.expand(batch, -1, -1)] if self.global_prompt is not None else []
        n_carried = len(carried)
        deep = torch.cat([self.visual_prompts, self.attribute_prompts], dim=1)
        for block, prompts in zip(vit.blocks, deep):
            prompts = self.prompt_dropout(prompts).unsqueeze(0).expand(batch, -1, -1)
            x = block(torch.cat([prefix, *carried, prompts, patches], dim=1))
            prefix = x[:, :n_prefix]
            carried = [x[:, n_prefix:n_prefix + n_carried]] if n_carried else []
            patches = x[:, n_prefix + n_carried + prompts.shape[1]:]
        return vit.norm(prefix[:, 0])

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return features if pre_logits else self.head(features)
