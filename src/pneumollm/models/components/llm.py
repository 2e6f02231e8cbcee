"""LLM trunks: a frozen decoder-only LLM (Llama, Mistral, Qwen2/3, Gemma 1/2/3, Phi-3) fed with visual tokens,
or no trunk at all. What differs between the families is in ``trunk_families.TRUNK_FAMILIES``."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel
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
from pneumollm.models.components.pretrained import (
    LM_HEAD,
    TOKEN_EMBEDDING,
    CheckpointRules,
    load_or_build,
    load_pretrained,
)
from pneumollm.models.components.quantization import QuantSpec
from pneumollm.models.components.trunk_architectures import (
    TRUNK_ARCHITECTURES,
    trunk_architecture,
    trunk_config,
)
from pneumollm.models.components.trunk_families import TRUNK_FAMILIES, TrunkFamily, trunk_family
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
# LlamaConfig keyword sets (no model_type), for the LLaMA answer models of the Table 3 arms.
LLAMA_ARCHITECTURES: dict[str, dict[str, Any]] = {"llama7b": LLAMA_7B, "tiny": TINY_LLAMA}
CAUSAL_LM_TYPES = frozenset(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
# A trunk checkpoint is a causal LM (or its base model) of a family in TRUNK_FAMILIES (AutoModel picks the class
# from model_type); it must hold every tensor of its base model but the token embedding, and may hold the LM head.
TRUNK_RULES = CheckpointRules(model_types=frozenset(TRUNK_FAMILIES), unused=(LM_HEAD,), absent=(TOKEN_EMBEDDING,),
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


class DecoderTrunk(LanguageTrunk):
    """A frozen decoder-only LLM's base model (all decoder layers and the final norm) of any family in
    ``TRUNK_FAMILIES``: Llama 1/2/3 (Meditron, MedLlama3), Mistral (BioMistral), Qwen2/2.5/3, Gemma 1/2/3, Phi-3.

    Fed ``inputs_embeds`` at positions 0..T-1 with the given 4-D additive mask in every layer (no BOS, no text,
    no causal mask added; it replaces sliding windows too). Gemma-family inputs are multiplied by
    sqrt(hidden_size) first, as their dropped token embedding did. The token embeddings are never built (random
    builds) or dropped right after loading unless ``keep_token_embeddings``; ``excluded_parameter_count``
    records their size. The family comes from the checkpoint's (or the architecture's) ``model_type``.
    ``pretrained: true`` loads ``name_or_path`` (hub id or local folder of a causal LM or its base model);
    ``pretrained: false`` builds ``architecture`` (a name of ``TRUNK_ARCHITECTURES``: full-size ``llama7b``,
    ``llama2_7b``, ``mistral7b_v01``, ``qwen2_5_7b``, ``gemma2_9b``, ``phi3_mini_4k``, ... or ``tiny_<family>``)
    randomly initialised with seed ``init_seed``, changed by ``config_overrides``.
    ``adapter.kind``: ``repadapter`` (before attention, on the normalised input that feeds q/k/v, or Phi-3's fused
    ``qkv_proj``), ``lora`` (peft, on q/k/v by default; Llama names map onto Phi-3's fused layers) or ``none``.
    ``attn_implementation``: ``auto`` (``sdpa``; ``eager`` for Gemma-2), ``sdpa`` or ``eager``; flash attention is
    refused (it would drop the emitter's mask). ``quantization``: ``null``, ``nf4`` or ``int8`` (bitsandbytes; the
    decoder layers' linear layers only, see ``QuantSpec``); adapters then cannot be folded.
    ``gradient_checkpointing`` recomputes each decoder layer in the backward pass (non-reentrant).
    """

    def __init__(
        self,
        name_or_path: str | None = "huggyllama/llama-7b",
        pretrained: bool = True,
        architecture: str = "llama7b",
        config_overrides: Mapping[str, Any] | None = None,
        adapter: Mapping[str, Any] | AdapterSpec | None = None,
        frozen_dtype: str | torch.dtype = "auto",
        attn_implementation: str = "auto",
        keep_token_embeddings: bool = False,
        init_seed: int | None = 0,
        quantization: str | Mapping[str, Any] | QuantSpec | None = None,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.quantization = QuantSpec.parse(quantization)
        self.family = _family(pretrained, name_or_path, architecture, config_overrides)
        build = load_or_build(AutoModel, trunk_config, TRUNK_ARCHITECTURES, pretrained=pretrained,
                              name_or_path=name_or_path, architecture=architecture,
                              config_overrides=config_overrides, frozen_dtype=frozen_dtype,
                              attn_implementation=self.family.attention(attn_implementation), init_seed=init_seed,
                              loader=AutoModel, drop=() if keep_token_embeddings else ("embed_tokens",),
                              quantization=self.quantization, rules=TRUNK_RULES)
        model = build.model
        _check_decoder_layout(model, self.family, str(name_or_path) if pretrained else architecture)
        self.excluded_parameter_count = build.dropped_parameters
        self.model = model
        self.hidden_size = model.config.hidden_size
        # Gemma's embedding module multiplies by sqrt(hidden_size) (a Python float, stored as a float32 tensor)
        self.input_scale = math.sqrt(self.hidden_size) if self.family.scale_inputs else None
        self.sliding_window = _sliding_window(model.config)
        self._window_warned = False
        spec = AdapterSpec.parse(adapter)
        self.adapter_spec = replace(spec, lora_targets=self.family.lora_targets(spec.lora_targets))
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
        """Where adapters go: each decoder layer's norm in front of attention, which feeds q, k and v."""
        return attention_sites(self.model.layers, self.family.attention_norm, self.family.qkv)

    def mask_dtype(self, device: torch.device) -> torch.dtype:
        return autocast_dtype_or(device, self.frozen_dtype)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """The trunk's ``inputs_embeds``: ``tokens`` in the frozen dtype, scaled as the family's embedding does."""
        hidden = tokens.to(self.frozen_dtype)
        if self.input_scale is None:
            return hidden
        return hidden * torch.tensor(self.input_scale, dtype=torch.float32, device=hidden.device).to(hidden.dtype)

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        length = tokens.shape[1]
        if self.sliding_window is not None and length > self.sliding_window and not self._window_warned:
            self._window_warned = True
            warnings.warn(f"{length} tokens exceed the {self.family.name} trunk's sliding window of "
                          f"{self.sliding_window}: the emitter's mask lets every token see every source token, "
                          "farther apart than the pretrained local layers ever attended", stacklevel=2)
        positions = torch.arange(length, device=tokens.device).unsqueeze(0)
        out = self.model(inputs_embeds=self.embed(tokens), attention_mask=attention_mask, position_ids=positions,
                         use_cache=False)
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


LlamaTrunk = DecoderTrunk  # the name configs and checkpoints of the paper's LLaMA trunk use


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


def _family(pretrained: bool, name_or_path: str | None, architecture: str,
            config_overrides: Mapping[str, Any] | None) -> TrunkFamily:
    """The family of the checkpoint's ``config.json`` (read before any weight) or of the built-in architecture."""
    if pretrained:
        if name_or_path is None:
            raise ValueError("pretrained: true needs name_or_path (a hub id or a local folder)")
        return trunk_family(load_pretrained(AutoConfig, name_or_path).model_type, str(name_or_path))
    values = {**trunk_architecture(architecture), **dict(config_overrides or {})}
    return trunk_family(values["model_type"], f"llm.architecture={architecture}")


def _sliding_window(config: Any) -> int | None:
    """The smallest attention window the config declares for any layer (None: every layer attends globally)."""
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if window is None or (layer_types is not None and "sliding_attention" not in layer_types):
        return None
    return int(window)


def _check_decoder_layout(model: nn.Module, family: TrunkFamily, where: str) -> None:
    """Every decoder layer has the family's attention norm and q/k/v layers (what adapters attach to)."""
    layers = getattr(model, "layers", None)
    expected = (family.attention_norm, *family.qkv)

    def has(layer: nn.Module, name: str) -> bool:
        try:
            layer.get_submodule(name)
        except AttributeError:
            return False
        return True

    if not layers or not all(has(layer, name) for layer in layers for name in expected):
        raise UserError(f"{where!r} built as {type(model).__name__}, which lacks the {family.name} decoder layout "
                        f"(expected .layers[i].{{{', '.join(expected)}}})")
