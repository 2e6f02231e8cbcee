"""What differs between decoder-only LLM families when one serves as PneumoLLM's frozen trunk: one table.

The trunk (``llm.DecoderTrunk``) feeds visual tokens as ``inputs_embeds`` with the emitter's 4-D additive mask,
drops the token embedding and puts adapters in front of attention. Those steps touch exactly the places where
families differ, so every such fact lives in ``TRUNK_FAMILIES``, keyed by the checkpoint's ``model_type``:

- input scaling: Gemma, Gemma-2 and Gemma-3 multiply the looked-up embeddings by sqrt(hidden_size) inside
  their token-embedding module (``Gemma*TextScaledWordEmbedding``), which the trunk drops, so the trunk
  multiplies its input itself, with the normaliser rounded to the weights' dtype as that module does;
- projections: Phi-3 fuses q/k/v into ``self_attn.qkv_proj`` (and gate/up into ``mlp.gate_up_proj``): the
  RepAdapter folds into the fused layer, and LoRA targets named the Llama way are mapped onto it;
- attention implementations: ``sdpa`` and ``eager`` honour a 4-D additive mask; Gemma-2 has no ``sdpa`` path in
  transformers (its soft-capped logits), so it runs ``eager``. Flash attention is refused for every family: it
  reads a mask as a 2-D padding mask, so the emitter's mask would be lost;
- sliding windows (Mistral v0.1, BioMistral, Gemma-2/3, Phi-3): transformers returns a ready 4-D mask as is,
  so the emitter's mask replaces the causal and the sliding-window masks. With the paper's d + m = 10 tokens
  (far below the smallest window, 512) this changes nothing; ``DecoderTrunk`` warns when a sequence is longer
  than the window.

A ``model_type`` missing from the table is refused: a family the suite has not checked may scale its inputs,
fuse its projections or mask differently, and any of those would go wrong silently, not with an error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from pneumollm.errors import ConfigError
from pneumollm.models.components.adapters import HF_QKV
from pneumollm.models.components.pretrained import WeightsMismatchError

ATTENTION_OK = ("sdpa", "eager")  # both read the emitter's 4-D additive mask as given
AUTO_ATTENTION = "auto"  # the family's first allowed implementation


@dataclass(frozen=True)
class TrunkFamily:
    """The facts the trunk needs about one decoder-only family (see the module docstring)."""

    name: str
    members: str  # released models (and medical derivatives) that share the architecture
    scale_inputs: bool = False  # inputs_embeds * sqrt(hidden_size), as the dropped embedding module did
    attention_norm: str = "input_layernorm"  # the norm in front of self-attention, which feeds q, k and v
    qkv: tuple[str, ...] = HF_QKV  # the linear layers that read the attention norm's output
    fused: Mapping[str, str] = field(default_factory=dict)  # Llama projection name -> this family's fused one
    attn_implementations: tuple[str, ...] = ATTENTION_OK
    attention_note: str = ""  # why an implementation is missing from attn_implementations

    def lora_targets(self, targets: Sequence[str]) -> tuple[str, ...]:
        """``targets`` with Llama's separate projection names replaced by this family's fused ones (once each)."""
        return tuple(dict.fromkeys(self.fused.get(t, t) for t in targets))

    def attention(self, requested: str) -> str:
        """The attention implementation to build with: ``requested``, or the family's default for ``auto``."""
        if requested == AUTO_ATTENTION:
            return self.attn_implementations[0]
        if requested.startswith("flash_attention"):
            raise ConfigError(
                f"llm.attn_implementation={requested} is refused for every trunk: flash attention takes a mask as "
                "a 2-D padding mask, so the information emitter's 4-D mask would be dropped and the diagnosis "
                f"tokens would leak into the source tokens. Use one of {self.attn_implementations}")
        if requested not in self.attn_implementations:
            reason = f" ({self.attention_note})" if self.attention_note else ""
            raise ConfigError(f"llm.attn_implementation={requested} is not available for {self.name} trunks{reason}; "
                              f"choose {' or '.join(self.attn_implementations)} (or auto)")
        return requested


LLAMA = TrunkFamily("Llama", "LLaMA 1, Llama 2, Llama 3 / 3.1; Meditron (Llama 2), MedLlama3 (Llama 3)")
MISTRAL = TrunkFamily("Mistral", "Mistral-7B v0.1 / v0.3; BioMistral (Mistral-7B-Instruct v0.1)")
QWEN2 = TrunkFamily("Qwen2", "Qwen2, Qwen2.5 (q/k/v with biases)")
QWEN3 = TrunkFamily("Qwen3", "Qwen3 dense models (q/k norms after the projections)")
GEMMA = TrunkFamily("Gemma", "Gemma 2B / 7B", scale_inputs=True)
GEMMA2 = TrunkFamily("Gemma-2", "Gemma-2 2B / 9B / 27B", scale_inputs=True, attn_implementations=("eager",),
                     attention_note="transformers has no sdpa path for Gemma-2's soft-capped attention logits")
GEMMA3 = TrunkFamily("Gemma-3", "Gemma-3 text models (gemma-3-1b; model_type gemma3_text)", scale_inputs=True)
PHI3 = TrunkFamily("Phi-3", "Phi-3-mini / medium (fused qkv_proj and gate_up_proj)", qkv=("self_attn.qkv_proj",),
                   fused={"q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj",
                          "gate_proj": "gate_up_proj", "up_proj": "gate_up_proj"})

TRUNK_FAMILIES: dict[str, TrunkFamily] = {
    "llama": LLAMA,
    "mistral": MISTRAL,
    "qwen2": QWEN2,
    "qwen3": QWEN3,
    "gemma": GEMMA,
    "gemma2": GEMMA2,
    "gemma3_text": GEMMA3,
    "phi3": PHI3,
}
# model_types that look close to a supported one but are not loadable as a trunk, with what to use instead
NEAR_MISSES = {
    "gemma3": "a multimodal Gemma-3 checkpoint (4B and larger, with a vision tower); use a text-only Gemma-3 "
              "(model_type gemma3_text, e.g. google/gemma-3-1b-pt)",
    "phi3small": "Phi-3-small has its own block-sparse attention code (remote code), not the Phi-3 layout",
}


class UnsupportedTrunkError(WeightsMismatchError):
    """A checkpoint or architecture whose ``model_type`` is not in ``TRUNK_FAMILIES``."""


def supported_families() -> str:
    """``Name (model_type): members`` for every family, for messages and docs."""
    return "; ".join(f"{f.name} ({t}): {f.members}" for t, f in TRUNK_FAMILIES.items())


def trunk_family(model_type: str, where: str = "the trunk") -> TrunkFamily:
    """The family of ``model_type``, or an ``UnsupportedTrunkError`` listing the supported ones."""
    if model_type in TRUNK_FAMILIES:
        return TRUNK_FAMILIES[model_type]
    hint = f" It is {NEAR_MISSES[model_type]}." if model_type in NEAR_MISSES else ""
    raise UnsupportedTrunkError(
        f"{where}: holds a {model_type!r} model, not a decoder-only LLM family the trunk supports.{hint} Supported "
        f"families: {supported_families()}. A family not checked may scale its inputs, fuse its projections or "
        "mask attention its own way, which would go wrong silently; add it to TRUNK_FAMILIES "
        "(pneumollm/models/components/trunk_families.py) with a tiny build in tests/test_trunk_families.py")
