"""What a table row's configuration holds at full size: the numbers ``arm_param_count.full_size_row`` counts on the
meta device and the results tables print beside the paper's columns. Plain numbers, no torch, so the tables can
read them from the count cache without building a model."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

GB = 1e9  # the tables' GB: 10^9 bytes, as pneumollm-param-count and pneumollm-backbone-sizes print them


@dataclass(frozen=True)
class RowSize:
    """A row at full size: trainable and frozen parameters, and the frozen weights' bytes with every frozen
    backbone weight in bf16 and with the LLM trunk's linear layers in nf4 (``llm.quantization=nf4``, double
    quantisation, as it builds; None for a row without a PneumoLLM trunk to quantise)."""

    trainable: int
    frozen: int
    frozen_bf16_bytes: int
    frozen_nf4_bytes: int | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RowSize:
        return cls(**values)
