"""Full-size LLM trunks built on the ``meta`` device (no memory, no download): their parameters, the adapters'
trainable parameters and the frozen weights' bytes in bf16, int8 and nf4.

``python -m pneumollm.models.trunk_sizes`` prints the table of every built-in full-size architecture
(``trunk_architectures.FULL_SIZE_TRUNKS``); ``pneumollm-backbone-sizes`` prints it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from pneumollm.models.components.llm import DecoderTrunk
from pneumollm.models.components.quantization import QuantSpec, quantizable_linears
from pneumollm.models.components.trunk_architectures import FULL_SIZE_TRUNKS, TRUNK_CHECKPOINTS

# How the trunk's frozen weights are stored: bf16 throughout, or its decoder linear layers quantised
# (bitsandbytes; norms stay bf16), as llm.quantization builds them.
TRUNK_STORAGE: dict[str, QuantSpec | None] = {
    "bf16": None,
    "int8": QuantSpec("int8"),
    "nf4": QuantSpec("nf4", double_quant=False),
    "nf4+dq": QuantSpec("nf4", double_quant=True),
}
BF16_BYTES = 2


@dataclass(frozen=True)
class TrunkSize:
    """One trunk architecture's counts: frozen parameters it holds, the token embedding it drops, the trainable
    parameters of its default RepAdapters (hidden 8) and of LoRA r=8 on q/k/v, and frozen bytes per storage."""

    architecture: str
    family: str
    frozen: int
    dropped_embedding: int
    repadapter: int
    lora: int
    frozen_bytes: dict[str, int]


def _meta_trunk(architecture: str, adapter: str) -> DecoderTrunk:
    with torch.device("meta"):
        return DecoderTrunk(pretrained=False, architecture=architecture, frozen_dtype="bfloat16",
                            adapter={"kind": adapter})


def frozen_bytes(trunk: DecoderTrunk, quant: QuantSpec | None) -> int:
    """Bytes of ``trunk``'s frozen weights in bf16, with its linear layers stored as ``quant`` (if given)."""
    quantized = {} if quant is None else {id(m.weight): m for _, m in quantizable_linears(trunk.model)}
    total = 0
    for param in trunk.parameters():
        if param.requires_grad:
            continue
        linear = quantized.get(id(param))
        total += (quant.weight_bytes(linear.out_features, linear.in_features) if linear is not None
                  else param.numel() * BF16_BYTES)
    return total


def trunk_size(architecture: str) -> TrunkSize:
    """The counts of a built-in architecture (see ``TrunkSize``), from builds on the meta device."""
    plain = _meta_trunk(architecture, "none")
    trainable = {kind: sum(p.numel() for p in _meta_trunk(architecture, kind).parameters() if p.requires_grad)
                 for kind in ("repadapter", "lora")}
    return TrunkSize(architecture, plain.family.name, sum(p.numel() for p in plain.parameters()),
                     plain.excluded_parameter_count, trainable["repadapter"], trainable["lora"],
                     {name: frozen_bytes(plain, quant) for name, quant in TRUNK_STORAGE.items()})


def hub_ids(architecture: str) -> list[str]:
    """The hub ids of ``TRUNK_CHECKPOINTS`` with this architecture."""
    return [c.hub_id for c in TRUNK_CHECKPOINTS.values() if c.architecture == architecture]


def trunk_memory_table(architectures: Sequence[str] = FULL_SIZE_TRUNKS) -> str:
    """Markdown: per architecture its family, hub ids, parameters, adapter sizes and frozen GB per storage."""
    from pneumollm.utils.markdown import markdown_table

    header = ["architecture", "family", "hub id", "trunk parameters", "dropped embedding", "RepAdapter trainable",
              "LoRA r=8 q/k/v trainable", *(f"{name} GB" for name in TRUNK_STORAGE)]
    rows = []
    for name in architectures:
        size = trunk_size(name)
        rows.append([name, size.family, ", ".join(hub_ids(name)) or "-", f"{size.frozen:,}",
                     f"{size.dropped_embedding:,}", f"{size.repadapter:,}", f"{size.lora:,}",
                     *(f"{size.frozen_bytes[s] / 1e9:.2f}" for s in TRUNK_STORAGE)])
    return markdown_table(header, rows, align=["left", "left", "left"] + ["right"] * (len(header) - 3))
