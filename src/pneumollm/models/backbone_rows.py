"""The rows of the backbone comparison (``experiments/backbones.yaml``, issue 25): the paper's PneumoLLM with one
frozen backbone swapped, by arm name.

Each row is ``conf/arm/backbone_<choice>.yaml``, which picks ``llm=${size}_<choice>`` or
``encoder=${size}_<choice>`` (``conf/llm/`` or ``conf/encoder/``, both sizes) and keeps every other part of
the paper's recipe. ``source`` names the row's entry in the catalogues its settings come from:
``trunk_architectures.TRUNK_CHECKPOINTS`` (hub id and built-in architecture of a trunk) or
``vision_backbones.VISION_BACKBONES`` (an encoder's settings); the tests check the YAMLs against them. This
module holds names only, so the config resolvers can read the labels without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass

PARTS = ("llm", "encoder")
ARM_PREFIX = "backbone_"


@dataclass(frozen=True)
class BackboneRow:
    """One row: the part it swaps, the group choice without its size prefix, its catalogue entry, its label."""

    part: str  # llm | encoder
    choice: str  # conf/<part>/{tiny,full}_<choice>.yaml
    source: str  # TRUNK_CHECKPOINTS key (llm) or VISION_BACKBONES key (encoder)
    label: str  # the row's label in the table

    @property
    def arm(self) -> str:
        """The row's ``arm=`` name (``conf/arm/backbone_<choice>.yaml``)."""
        return f"{ARM_PREFIX}{self.choice}"


_ROWS = (
    # trunks, with the paper's CLIP ViT-L/14
    BackboneRow("llm", "llama2_7b", "llama2_7b", "Llama-2-7B"),
    BackboneRow("llm", "llama3_1_8b", "llama3_1_8b", "Llama-3.1-8B"),
    BackboneRow("llm", "mistral7b", "mistral7b_v01", "Mistral-7B"),
    BackboneRow("llm", "qwen2_5_7b", "qwen2_5_7b", "Qwen2.5-7B"),
    BackboneRow("llm", "gemma2_9b", "gemma2_9b", "Gemma-2-9B"),
    BackboneRow("llm", "phi3_mini", "phi3_mini_4k", "Phi-3-mini"),
    BackboneRow("llm", "biomistral7b", "biomistral7b", "BioMistral-7B"),
    BackboneRow("llm", "meditron7b", "meditron7b", "Meditron-7B"),
    # vision encoders, with the paper's LLaMA-7B
    BackboneRow("encoder", "rad_dino", "rad_dino", "RAD-DINO"),
    BackboneRow("encoder", "dinov2_vitb14", "dinov2_vitb14", "DINOv2 ViT-B/14"),
    BackboneRow("encoder", "dinov2_vitl14", "dinov2_vitl14", "DINOv2 ViT-L/14"),
    BackboneRow("encoder", "biomedclip_b16", "biomedclip_b16", "BiomedCLIP ViT-B/16"),
    BackboneRow("encoder", "siglip_b16_224", "siglip_b16_224", "SigLIP B/16"),
    BackboneRow("encoder", "siglip_so400m_14_384", "siglip_so400m_14_384", "SigLIP So400m/14"),
)
BACKBONE_ROWS: dict[str, BackboneRow] = {row.arm: row for row in _ROWS}


def backbone_row(arm: str) -> BackboneRow | None:
    """The backbone row named ``arm``; None for any other name."""
    return BACKBONE_ROWS.get(arm)


def rows_of(part: str) -> list[BackboneRow]:
    """The rows that swap ``part`` (``llm`` or ``encoder``), in the table's order."""
    if part not in PARTS:
        raise ValueError(f"unknown part {part!r}; choose one of {PARTS}")
    return [row for row in _ROWS if row.part == part]
