"""Built-in LLM trunk architectures (``llm.architecture``, for ``pretrained: false`` builds) and the hub
checkpoints that hold their weights (``TRUNK_CHECKPOINTS``, for ``llm.name_or_path``).

Each full-size entry repeats the hyper-parameters of the model's public ``config.json`` on the Hugging Face hub
(the hub id is in the comment above it) under the same keys, plus its ``model_type``; ``trunk_config`` turns one
into the family's transformers config (``AutoConfig.for_model``). Built as a full causal LM on the ``meta``
device, each has exactly the parameter count its hub page publishes (``tests/test_trunk_families.py``).
Values a frozen trunk fed ``inputs_embeds`` never reads (token ids, generation settings) are left out.
``tiny_<family>`` entries are the CPU stand-ins of ``pneumollm.models.tiny.TINY_TRUNKS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pneumollm.models.tiny import TINY_LLAMA, TINY_TRUNKS

_LLAMA2_7B = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
              "num_key_value_heads": 32, "vocab_size": 32000, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
              "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": False}
_LLAMA3_8B = {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
              "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 8192, "rms_norm_eps": 1e-5,
              "rope_theta": 500000.0, "hidden_act": "silu", "tie_word_embeddings": False}
_MISTRAL_7B_V01 = {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                   "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 32000,
                   "max_position_embeddings": 32768, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
                   "sliding_window": 4096, "hidden_act": "silu", "tie_word_embeddings": False}

TRUNK_ARCHITECTURES: dict[str, dict[str, Any]] = {
    # LLaMA-7B (Touvron et al. 2023), huggyllama/llama-7b: the paper's trunk
    "llama7b": {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000,
                "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "hidden_act": "silu"},
    # meta-llama/Llama-2-7b-hf
    "llama2_7b": {"model_type": "llama", **_LLAMA2_7B},
    # meta-llama/Meta-Llama-3-8B
    "llama3_8b": {"model_type": "llama", **_LLAMA3_8B},
    # meta-llama/Llama-3.1-8B (the llama3 RoPE scaling of the 128k context)
    "llama3_1_8b": {"model_type": "llama", **_LLAMA3_8B, "max_position_embeddings": 131072,
                    "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                     "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}},
    # mistralai/Mistral-7B-v0.1
    "mistral7b_v01": {"model_type": "mistral", **_MISTRAL_7B_V01},
    # mistralai/Mistral-7B-v0.3 (a 32,768-token vocabulary, no sliding window, RoPE base 1e6)
    "mistral7b_v03": {"model_type": "mistral", **_MISTRAL_7B_V01, "vocab_size": 32768, "rope_theta": 1000000.0,
                      "sliding_window": None},
    # Qwen/Qwen2.5-7B
    "qwen2_5_7b": {"model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                   "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
                   "max_position_embeddings": 131072, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
                   "use_sliding_window": False, "sliding_window": 131072, "max_window_layers": 28,
                   "hidden_act": "silu", "tie_word_embeddings": False},
    # Qwen/Qwen3-8B
    "qwen3_8b": {"model_type": "qwen3", "hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36,
                 "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936,
                 "max_position_embeddings": 40960, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
                 "hidden_act": "silu", "tie_word_embeddings": False},
    # google/gemma-7b
    "gemma7b": {"model_type": "gemma", "hidden_size": 3072, "intermediate_size": 24576, "num_hidden_layers": 28,
                "num_attention_heads": 16, "num_key_value_heads": 16, "head_dim": 256, "vocab_size": 256000,
                "max_position_embeddings": 8192, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
                "hidden_activation": "gelu_pytorch_tanh", "tie_word_embeddings": True},
    # google/gemma-2-9b
    "gemma2_9b": {"model_type": "gemma2", "hidden_size": 3584, "intermediate_size": 14336, "num_hidden_layers": 42,
                  "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 256, "vocab_size": 256000,
                  "max_position_embeddings": 8192, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
                  "sliding_window": 4096, "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
                  "query_pre_attn_scalar": 256, "hidden_activation": "gelu_pytorch_tanh",
                  "tie_word_embeddings": True},
    # google/gemma-3-1b-pt (text only; 5 sliding-window layers of 512 tokens per full-attention layer)
    "gemma3_1b": {"model_type": "gemma3_text", "hidden_size": 1152, "intermediate_size": 6912,
                  "num_hidden_layers": 26, "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256,
                  "vocab_size": 262144, "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
                  "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0, "sliding_window": 512,
                  "sliding_window_pattern": 6, "query_pre_attn_scalar": 256,
                  "hidden_activation": "gelu_pytorch_tanh", "tie_word_embeddings": True},
    # microsoft/Phi-3-mini-4k-instruct
    "phi3_mini_4k": {"model_type": "phi3", "hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 32,
                     "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32064,
                     "max_position_embeddings": 4096, "original_max_position_embeddings": 4096,
                     "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "sliding_window": 2047, "hidden_act": "silu",
                     "pad_token_id": 32000, "bos_token_id": 1, "eos_token_id": 32000, "tie_word_embeddings": False},
    # epfl-llm/meditron-7b: Llama-2-7B continued on medical text, 17 tokens added to the vocabulary, 2k context
    "meditron7b": {"model_type": "llama", **_LLAMA2_7B, "vocab_size": 32017, "max_position_embeddings": 2048},
    # BioMistral/BioMistral-7B: Mistral-7B-Instruct-v0.1 continued on PubMed Central, same architecture as v0.1
    "biomistral7b": {"model_type": "mistral", **_MISTRAL_7B_V01},
    # the CPU stand-ins
    "tiny": {"model_type": "llama", **TINY_LLAMA},
    **{f"tiny_{family}": values for family, values in TINY_TRUNKS.items()},
}
FULL_SIZE_TRUNKS = tuple(name for name in TRUNK_ARCHITECTURES if not name.startswith("tiny"))


@dataclass(frozen=True)
class TrunkCheckpoint:
    """Where a trunk's pretrained weights live: the hub id, the built-in architecture it has, its terms."""

    hub_id: str
    architecture: str
    licence: str
    access: str  # OPEN, GATED (the hub serves the files once the terms are accepted) or CHECK


OPEN = "open"
GATED = "gated: accept the terms on the model page, then `hf auth login`"
CHECK = "not checked here: see the model page"
TRUNK_CHECKPOINTS: dict[str, TrunkCheckpoint] = {
    "llama7b": TrunkCheckpoint("huggyllama/llama-7b", "llama7b", "LLaMA licence (non-commercial research)", OPEN),
    "llama2_7b": TrunkCheckpoint("meta-llama/Llama-2-7b-hf", "llama2_7b", "Llama 2 Community Licence", GATED),
    "llama3_8b": TrunkCheckpoint("meta-llama/Meta-Llama-3-8B", "llama3_8b", "Meta Llama 3 Community Licence", GATED),
    "llama3_1_8b": TrunkCheckpoint("meta-llama/Llama-3.1-8B", "llama3_1_8b", "Llama 3.1 Community Licence", GATED),
    "mistral7b_v01": TrunkCheckpoint("mistralai/Mistral-7B-v0.1", "mistral7b_v01",
                                     "Apache-2.0 (the hub asks to share contact details)", GATED),
    "mistral7b_v03": TrunkCheckpoint("mistralai/Mistral-7B-v0.3", "mistral7b_v03",
                                     "Apache-2.0 (the hub asks to share contact details)", GATED),
    "qwen2_5_7b": TrunkCheckpoint("Qwen/Qwen2.5-7B", "qwen2_5_7b", "Apache-2.0", OPEN),
    "qwen3_8b": TrunkCheckpoint("Qwen/Qwen3-8B", "qwen3_8b", "Apache-2.0", OPEN),
    "gemma7b": TrunkCheckpoint("google/gemma-7b", "gemma7b", "Gemma Terms of Use", GATED),
    "gemma2_9b": TrunkCheckpoint("google/gemma-2-9b", "gemma2_9b", "Gemma Terms of Use", GATED),
    "gemma3_1b": TrunkCheckpoint("google/gemma-3-1b-pt", "gemma3_1b", "Gemma Terms of Use", GATED),
    "phi3_mini_4k": TrunkCheckpoint("microsoft/Phi-3-mini-4k-instruct", "phi3_mini_4k", "MIT", OPEN),
    "meditron7b": TrunkCheckpoint("epfl-llm/meditron-7b", "meditron7b",
                                  "Llama 2 Community Licence (a Llama 2 derivative)", CHECK),
    "biomistral7b": TrunkCheckpoint("BioMistral/BioMistral-7B", "biomistral7b", "Apache-2.0", CHECK),
    "medllama3": TrunkCheckpoint("ProbeMedicalYonseiMAILab/medllama3-v20", "llama3_8b",
                                 "Meta Llama 3 Community Licence (a Llama 3 derivative)", CHECK),
}


def trunk_architecture(name: str) -> dict[str, Any]:
    """The built-in architecture ``name`` (with its ``model_type``), or a ``ValueError`` listing them."""
    if name not in TRUNK_ARCHITECTURES:
        raise ValueError(f"unknown llm.architecture {name!r}; choose one of {sorted(TRUNK_ARCHITECTURES)}")
    return TRUNK_ARCHITECTURES[name]


def trunk_config(**values: Any) -> Any:
    """The transformers config of a trunk: ``values`` holds its ``model_type`` and hyper-parameters."""
    from transformers import AutoConfig

    values = dict(values)
    return AutoConfig.for_model(values.pop("model_type"), **values)
