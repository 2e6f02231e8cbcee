"""LLM trunks: a frozen Llama-family decoder stack fed with visual tokens, or no trunk at all."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn
from transformers import AutoModel, LlamaConfig, LlamaModel
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from pneumollm.errors import UserError
from pneumollm.models.components.adapters import (
    AdapterSite,
    AdapterSpec,
    attach_lora,
    attach_repadapters,
    attention_sites,
    fold_repadapters,
    merge_lora,
)
from pneumollm.models.components.frozen import autocast_dtype_or, enable_gradient_checkpointing
from pneumollm.models.components.pretrained import LM_HEAD, TOKEN_EMBEDDING, CheckpointRules, load_or_build
from pneumollm.models.components.quantization import QuantSpec
from pneumollm.models.tiny import TINY_LLAMA

# LLaMA-7B (Touvron et al. 2023), as in the Hugging Face conversion huggyllama/llama-7b.
LLAMA_7B: dict[str, Any] = {
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "vocab_size": 32000,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-6,
    "hidden_act": "silu",
}
LLAMA_ARCHITECTURES: dict[str, dict[str, Any]] = {"llama7b": LLAMA_7B, "tiny": TINY_LLAMA}
# A trunk checkpoint is any causal LM family transformers knows (AutoModel picks the class from model_type);
# it must hold every tensor of its base model but the token embedding, and may hold the LM head we never use.
CAUSAL_LM_TYPES = frozenset(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
TRUNK_RULES = CheckpointRules(model_types=CAUSAL_LM_TYPES, unused=(LM_HEAD,), absent=(TOKEN_EMBEDDING,),
                              what="decoder-only LLM")


class LanguageTrunk(nn.Module):
    """Tokens [B, T, hidden_size] and an additive mask (1, 1, T, T) -> tokens [B, T, hidden_size] (float32)."""

    hidden_size: int
    # Parameters of the checkpoint that the trunk dropped because it never uses them (token embeddings).
    excluded_parameter_count: int = 0

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def mask_dtype(self, device: torch.device) -> torch.dtype:
        """The dtype the attention scores are computed in, which the additive mask must match."""
        return torch.float32

    @property
    def uses_mask(self) -> bool:
        return True

    def fold_adapters(self) -> int:
        """Merge adapters into the frozen weights (inference); returns how many were merged."""
        return 0


class LlamaTrunk(LanguageTrunk):
    """A frozen Llama-family decoder stack (``LlamaModel``: all layers and the final RMSNorm).

    Fed ``inputs_embeds`` at positions 0..T-1 with the given 4-D additive mask in every layer (no BOS,
    no text, no causal mask added). Its token embeddings are never built (random builds) or dropped right
    after loading unless ``keep_token_embeddings``; ``excluded_parameter_count`` records their size.
    ``pretrained: true`` loads ``name_or_path`` (hub id or local folder of any Hugging Face Llama-family
    causal LM or base model); ``pretrained: false`` builds ``architecture`` (``llama7b`` or ``tiny``)
    randomly initialised with seed ``init_seed``, changed by ``config_overrides``.
    ``adapter.kind``: ``repadapter`` (before attention, on the normalised input), ``lora`` (peft, on
    q/k/v by default) or ``none``. ``quantization``: ``null``, ``nf4`` or ``int8`` (bitsandbytes; the decoder
    layers' linear layers only, see ``QuantSpec``); adapters then cannot be folded. ``gradient_checkpointing``
    recomputes each decoder layer in the backward pass (non-reentrant) instead of keeping its activations.
    """

    def __init__(
        self,
        name_or_path: str = "huggyllama/llama-7b",
        pretrained: bool = True,
        architecture: str = "llama7b",
        config_overrides: Mapping[str, Any] | None = None,
        adapter: Mapping[str, Any] | AdapterSpec | None = None,
        frozen_dtype: str | torch.dtype = "auto",
        attn_implementation: str = "sdpa",
        keep_token_embeddings: bool = False,
        init_seed: int | None = 0,
        quantization: str | Mapping[str, Any] | QuantSpec | None = None,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.quantization = QuantSpec.parse(quantization)
        build = load_or_build(LlamaModel, LlamaConfig, LLAMA_ARCHITECTURES, pretrained=pretrained,
                              name_or_path=name_or_path, architecture=architecture,
                              config_overrides=config_overrides, frozen_dtype=frozen_dtype,
                              attn_implementation=attn_implementation, init_seed=init_seed, loader=AutoModel,
                              drop=() if keep_token_embeddings else ("embed_tokens",),
                              quantization=self.quantization, rules=TRUNK_RULES)
        model = build.model
        if pretrained:
            _check_decoder_layout(model, name_or_path)
        self.excluded_parameter_count = build.dropped_parameters
        self.model = model
        self.hidden_size = model.config.hidden_size
        self.adapter_spec = AdapterSpec.parse(adapter)
        if self.adapter_spec.kind == "repadapter":
            attach_repadapters(self.adapter_sites(), self.hidden_size, self.adapter_spec)
        elif self.adapter_spec.kind == "lora":
            attach_lora(self.model, self.adapter_spec)
        if gradient_checkpointing:
            enable_gradient_checkpointing(self.model)

    @property
    def frozen_dtype(self) -> torch.dtype:
        """The frozen weights' current dtype (what the input tokens are cast to; quantised layers compute in it)."""
        return self.model.norm.weight.dtype

    @property
    def attn_implementation(self) -> str:
        return self.model.config._attn_implementation

    def adapter_sites(self) -> Iterator[AdapterSite]:
        """Where adapters go: each decoder layer's ``input_layernorm``, which feeds q, k and v."""
        return attention_sites(self.model.layers, "input_layernorm")

    def mask_dtype(self, device: torch.device) -> torch.dtype:
        return autocast_dtype_or(device, self.frozen_dtype)

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device).unsqueeze(0)
        out = self.model(inputs_embeds=tokens.to(self.frozen_dtype), attention_mask=attention_mask,
                         position_ids=positions, use_cache=False)
        return out.last_hidden_state.float()

    def fold_adapters(self) -> int:
        if self.quantization is not None and self.adapter_spec.enabled:
            what = "merge LoRA weights" if self.adapter_spec.kind == "lora" else "fold RepAdapters"
            raise RuntimeError(f"cannot {what} into {self.quantization.method}-quantised weights: the merged "
                               "weights would need full precision. Keep the adapters unfolded (they cost little at "
                               "inference) or build the trunk with llm.quantization=null to fold them")
        if self.adapter_spec.kind == "lora":
            return merge_lora(self.model)
        return fold_repadapters(self.adapter_sites())


class NoTrunk(LanguageTrunk):
    """"w/o LLaMA": the head reads the neck's output directly; the neck then maps to ``hidden_size``."""

    def __init__(self, hidden_size: int = 512) -> None:
        super().__init__()
        self.hidden_size = hidden_size

    @property
    def uses_mask(self) -> bool:
        return False

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return tokens


def _check_decoder_layout(model: nn.Module, name_or_path: str) -> None:
    layers = getattr(model, "layers", None)
    ok = layers is not None and len(layers) > 0 and all(
        hasattr(layer, "input_layernorm") and hasattr(layer, "self_attn") for layer in layers)
    if not ok:
        raise UserError(f"{name_or_path!r} loaded as {type(model).__name__}, which is not a Llama-family decoder "
                         "(expected .layers[i].input_layernorm and .self_attn)")
