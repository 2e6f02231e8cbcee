"""A frozen Hugging Face CLIPModel with its tokenizer, as the shared trunk of the Table 3 CLIP arms."""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoTokenizer, CLIPModel, PreTrainedTokenizerBase
from transformers.masking_utils import create_causal_mask

from pneumollm.models.base import InputNormalizer
from pneumollm.models.components.frozen import resolve_dtype
from pneumollm.models.components.pretrained import CheckpointRules, load_checked, load_pretrained
from pneumollm.models.task_texts import PAPER_PROMPTS  # noqa: F401 (re-exported)

CLIP_VIT_L14 = "openai/clip-vit-large-patch14"

ClipSource = str | os.PathLike[str] | CLIPModel
TokenizerSource = str | os.PathLike[str] | PreTrainedTokenizerBase | None


class FrozenCLIP(nn.Module):
    """CLIP image and text towers, frozen and in eval mode, with a text path that accepts embeddings.

    ``clip`` is a hub id, a local folder or an already built ``CLIPModel``; ``tokenizer`` defaults to
    the same id/folder. ``dtype`` (e.g. ``"float16"``) loads the weights in that precision; features are
    returned in float32.
    """

    def __init__(
        self,
        clip: ClipSource = CLIP_VIT_L14,
        tokenizer: TokenizerSource = None,
        normalization: str = "clip",
        dtype: str | None = None,
    ) -> None:
        super().__init__()
        if isinstance(clip, CLIPModel):
            model = clip
        else:
            kwargs = {"dtype": resolve_dtype(dtype)} if dtype else {}
            model = load_checked(CLIPModel, clip, CheckpointRules(model_types={"clip"}, what="CLIP model"), **kwargs)
        if tokenizer is None:
            if isinstance(clip, CLIPModel):
                raise ValueError("a tokenizer (id, folder or object) is needed when passing a built CLIPModel")
            tokenizer = clip
        if not isinstance(tokenizer, PreTrainedTokenizerBase):
            tokenizer = load_pretrained(AutoTokenizer, tokenizer)
        self.model = model.requires_grad_(False).eval()
        self.tokenizer = tokenizer
        self.normalize = InputNormalizer(normalization)

    def train(self, mode: bool = True) -> FrozenCLIP:
        super().train(mode)
        self.model.eval()
        return self

    @property
    def text_width(self) -> int:
        return self.model.text_embed_dim

    @property
    def embed_dim(self) -> int:
        """Width of the joint image-text space (768 for ViT-L/14)."""
        return self.model.projection_dim

    @property
    def token_embedding(self) -> nn.Embedding:
        return self.model.text_model.embeddings.token_embedding

    def logit_scale(self) -> torch.Tensor:
        """CLIP's learnt temperature, exponentiated (100 for the released ViT-L/14)."""
        return self.model.logit_scale.float().exp()

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Projected image embeddings [B, embed_dim] (not normalised) of films [B, 1, H, W] in [0, 1]."""
        pixels = self.normalize(images).to(self.model.visual_projection.weight.dtype)
        return self.model.get_image_features(pixel_values=pixels).pooler_output.float()

    def image_embedding(self) -> nn.Module:
        """The image path as a module of its own (films -> ``encode_image``), e.g. for the feature cache."""
        return ClipImageEmbedding(self)

    def tokenize(self, texts: list[str] | tuple[str, ...]) -> torch.Tensor:
        """Token ids [N, L] with start/end tokens, padded to the longest text."""
        ids = self.tokenizer(list(texts), padding=True, return_tensors="pt")["input_ids"]
        return ids.to(self.model.logit_scale.device)

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Projected text embeddings [N, embed_dim] of token ids (CLIP's own text path)."""
        return self.model.get_text_features(input_ids=input_ids).pooler_output.float()

    def encode_text_embeddings(self, token_embeds: torch.Tensor, eos_positions: torch.Tensor) -> torch.Tensor:
        """Projected text embeddings [N, embed_dim] from token embeddings [N, L, width].

        The path CLIP's text tower takes after its token lookup: add positional embeddings, run the
        causal transformer, final LayerNorm, take the features at each sequence's end token
        (``eos_positions`` [N]), project to the joint space. Lets prompt learners put free vectors in
        token slots.
        """
        text = self.model.text_model
        dtype = self.token_embedding.weight.dtype
        hidden = text.embeddings(inputs_embeds=token_embeds.to(dtype))
        mask = create_causal_mask(config=text.config, inputs_embeds=hidden, attention_mask=None, cache=None)
        hidden = text.encoder(inputs_embeds=hidden, attention_mask=mask, is_causal=True).last_hidden_state
        hidden = text.final_layer_norm(hidden)
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), eos_positions]
        return self.model.text_projection(pooled).float()


def cosine_logits(image_features: torch.Tensor, text_features: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``scale`` x cosine similarity: image [B, P] against text [C, P] (shared) or [B, C, P] (per image)."""
    image = F.normalize(image_features, dim=-1)
    text = F.normalize(text_features, dim=-1)
    if text.dim() == 2:
        return scale * image @ text.t()
    return scale * torch.einsum("bp,bcp->bc", image, text)


class ClipImageEmbedding(nn.Module):
    """A ``FrozenCLIP``'s image path: films [B, 1, H, W] in [0, 1] -> projected image embeddings [B, P]."""

    def __init__(self, clip: FrozenCLIP) -> None:
        super().__init__()
        self.clip = clip

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_image(images)
