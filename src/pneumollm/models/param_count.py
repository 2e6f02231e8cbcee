"""Parameter and weight-memory accounting of PneumoLLM configurations, built on the ``meta`` device (no
memory, no download).

``pneumollm-param-count`` (``pneumollm.cli.param_count``) prints these counts: the table of every encoder and LLM
choice (``markdown_table``), and the bytes of a configuration's weights under each storage option
(``bytes_table``); `trunk_sizes.trunk_memory_table` gives every built-in full-size LLM trunk's
parameters and bytes. The paper's configuration (CLIP ViT-L/14 + LLaMA-7B, m = 4, adapter hidden 8, neck 128) has
exactly 2,704,000 trainable parameters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import hydra.utils
import torch
from omegaconf import DictConfig, OmegaConf

from pneumollm.models.components.quantization import QuantSpec, quantizable_linears
from pneumollm.models.pneumollm import PneumoLLM
from pneumollm.paths import conf_dir

CONF_DIR = conf_dir()
GROUPS = ("encoder", "token_engine", "neck", "emitter", "llm", "head")
DEFAULT_CHOICES = {"encoder": "tiny_clip_vit_l14", "token_engine": "cmte", "neck": "bottleneck", "emitter": "emitter",
                   "llm": "tiny_llama7b", "head": "mean_linear", "model": "pneumollm"}
PAPER_CHOICES = {"encoder": "full_clip_vit_l14", "llm": "full_llama7b"}
PAPER_TRAINABLE = 2_704_000


def compose_model_config(choices: dict[str, str] | None = None, overrides: Sequence[str] = (),
                         conf_dir: str | Path | None = None) -> DictConfig:
    """A config with the top-level layout of ``conf/train.yaml``: one node per group plus ``model``.

    ``choices`` picks a YAML per group (defaults: the tiny CPU model); ``overrides`` are dotlist
    strings such as ``"token_engine.m=8"`` or ``"llm.adapter.kind=lora"``.
    """
    root_dir = Path(conf_dir) if conf_dir is not None else CONF_DIR
    picked = {**DEFAULT_CHOICES, **(choices or {})}
    nodes = {}
    for group, choice in picked.items():
        path = root_dir / group / f"{choice}.yaml"
        if not path.is_file():
            options = sorted(p.stem for p in (root_dir / group).glob("*.yaml"))
            raise FileNotFoundError(f"no config {path} for {group}={choice}; available: {options}")
        nodes[group] = OmegaConf.load(path)
    cfg = OmegaConf.create(nodes)
    if overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    return cfg


def offline_architecture_overrides(cfg: DictConfig) -> list[str]:
    """Overrides that build every pretrained backbone of ``cfg`` as its random, full-size architecture."""
    out = []
    for group in ("encoder", "llm"):
        node = cfg[group]
        if "pretrained" in node:
            out.append(f"{group}.pretrained=false")
        if "frozen_dtype" in node:
            out.append(f"{group}.frozen_dtype=float32")
    return out


def build_model(cfg: DictConfig, device: str | torch.device = "cpu") -> PneumoLLM:
    """Instantiate ``cfg.model`` (recursively, as the training app does) with tensors created on ``device``."""
    with torch.device(device):
        return hydra.utils.instantiate(cfg.model)


@dataclass(frozen=True)
class ParameterCounts:
    """Trainable and total parameters of a built model, and the unused checkpoint weights it dropped."""

    trainable: int
    total: int
    excluded: int

    @classmethod
    def of(cls, model: torch.nn.Module) -> ParameterCounts:
        excluded = sum(getattr(m, "excluded_parameter_count", 0) for m in model.modules())
        return cls(trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
                   total=sum(parameter_numel(p) for p in model.parameters()), excluded=excluded)


def parameter_numel(param: torch.Tensor) -> int:
    """The number of weights a parameter stands for (an nf4 parameter stores two per byte)."""
    shape = getattr(getattr(param, "quant_state", None), "shape", None)
    return math.prod(shape) if shape is not None else param.numel()


def trainable_breakdown(model: PneumoLLM) -> dict[str, int]:
    """Trainable parameters per part (encoder, token_engine, neck, llm, head)."""
    parts = ("encoder", "token_engine", "neck", "llm", "head")
    return {name: sum(p.numel() for p in getattr(model, name).parameters() if p.requires_grad) for name in parts}


def full_size_counts(choices: dict[str, str], overrides: Sequence[str] = (),
                     conf_dir: str | Path | None = None) -> tuple[ParameterCounts, dict[str, int]]:
    """Counts of a configuration built full size on the meta device (pretrained backbones as architectures)."""
    model = full_size_model(choices, overrides, conf_dir)
    return ParameterCounts.of(model), trainable_breakdown(model)


TABLE_ROWS: list[tuple[str, dict[str, str], tuple[str, ...]]] = [
    ("paper: CLIP ViT-L/14 + LLaMA-7B, CMTE m=4, emitter", PAPER_CHOICES, ()),
    ("CLIP ViT-L/14 + LLaMA-7B, LoRA r=8 on q/k/v instead of RepAdapter", PAPER_CHOICES, ("llm.adapter.kind=lora",)),
    ("CLIP ViT-L/14 + LLaMA-7B, CoOp m=4", {**PAPER_CHOICES, "token_engine": "coop"}, ()),
    ("CLIP ViT-L/14 + LLaMA-7B, CoCoOp m=4", {**PAPER_CHOICES, "token_engine": "cocoop"}, ()),
    ("CLIP ViT-L/14 + LLaMA-7B, no token engine", {**PAPER_CHOICES, "token_engine": "none"}, ()),
    ("CLIP ViT-L/14 + LLaMA-7B, no adapters (Table 6 baseline, no engine)", {**PAPER_CHOICES, "token_engine": "none"},
     ("encoder.adapter.enabled=false", "llm.adapter.kind=none")),
    ("CLIP ViT-L/14, no LLM (hidden 512)", {**PAPER_CHOICES, "llm": "none"}, ()),
    ("CLIP ViT-L/14, no LLM, no token engine", {**PAPER_CHOICES, "llm": "none", "token_engine": "none"}, ()),
    ("ViT-B/16 in21k + LLaMA-7B", {**PAPER_CHOICES, "encoder": "full_vit_b16_in21k"}, ()),
    ("ViT-B/16 in21k, no LLM", {**PAPER_CHOICES, "encoder": "full_vit_b16_in21k", "llm": "none"}, ()),
    ("ViT-L/16 in21k + LLaMA-7B", {**PAPER_CHOICES, "encoder": "full_vit_l16_in21k"}, ()),
    ("ViT-L/16 in21k, no LLM", {**PAPER_CHOICES, "encoder": "full_vit_l16_in21k", "llm": "none"}, ()),
    ("14x14 conv stem (trainable) + LLaMA-7B", {**PAPER_CHOICES, "encoder": "full_conv_stem"}, ()),
    ("14x14 conv stem (trainable), no LLM", {**PAPER_CHOICES, "encoder": "full_conv_stem", "llm": "none"}, ()),
    ("tiny CLIP + tiny Llama (CPU demo)", {"encoder": "tiny_clip_vit_l14", "llm": "tiny_llama7b"}, ()),
]


def markdown_table(conf_dir: str | Path | None = None) -> str:
    """The trainable/total table of every row of ``TABLE_ROWS`` as Markdown."""
    from pneumollm.utils.markdown import markdown_table

    rows = []
    for label, choices, overrides in TABLE_ROWS:
        counts, _ = full_size_counts(choices, overrides, conf_dir)
        rows.append([label, f"{counts.trainable:,}", f"{counts.total:,}", f"{counts.excluded:,}"])
    return markdown_table(["configuration", "trainable", "total (in the model)", "unused embeddings dropped"], rows,
                          align=["left", "right", "right", "right"])


# How the frozen backbones are stored: element size of every frozen backbone weight, and the LLM trunk's
# quantisation (its linear layers only; norms, encoder and the rest stay 2-byte).
WEIGHT_OPTIONS: dict[str, tuple[int, QuantSpec | None]] = {
    "fp32": (4, None),
    "bf16/fp16": (2, None),
    "int8 trunk": (2, QuantSpec("int8")),
    "nf4 trunk": (2, QuantSpec("nf4", double_quant=False)),
    "nf4+dq trunk": (2, QuantSpec("nf4", double_quant=True)),
}
CARD_GIB = (8, 16, 24)
BYTES_NOTE = ("GB = 1e9 bytes; a card of N GB holds N GiB; activations and workspace come on top of the "
              "total, see docs/model.md")
TRAINING_BYTES_PER_TRAINABLE = 16  # fp32 parameter + gradient + AdamW's two moments


@dataclass(frozen=True)
class WeightBytes:
    """Bytes of a model's weights under one storage option (activations not included)."""

    option: str
    encoder: int  # frozen encoder weights
    llm: int  # frozen LLM trunk weights
    other_frozen: int  # any other frozen weight (e.g. a frozen CMTE), in its own dtype
    trainable: int  # trainable parameters, fp32

    @property
    def frozen(self) -> int:
        return self.encoder + self.llm + self.other_frozen

    @property
    def training(self) -> int:
        """Trainable parameters with their gradients and AdamW moments."""
        return self.trainable // 4 * TRAINING_BYTES_PER_TRAINABLE

    @property
    def total(self) -> int:
        """Frozen weights + the training state of the trainable ones (no activations, no workspace)."""
        return self.frozen + self.training

    def fits(self, card_gib: int) -> bool:
        """Whether ``total`` fits a card of ``card_gib`` GiB (what a "24 GB" card holds)."""
        return self.total <= card_gib * 2**30


def weight_bytes(model: PneumoLLM, option: str) -> WeightBytes:
    """The bytes of ``model``'s weights with its frozen backbones stored as ``option`` (``WEIGHT_OPTIONS``).

    Works on ``meta`` models: only shapes are read. Frozen weights of a backbone that has a ``frozen_dtype``
    (the vision tower, the LLM trunk) take the option's element size; with a quantised option the trunk's
    frozen ``nn.Linear`` weights take ``QuantSpec.weight_bytes`` instead (the layers a quantised build
    converts). Other frozen weights keep their dtype; trainable ones are fp32.
    """
    element, quant = WEIGHT_OPTIONS[option]
    quantized: dict[int, torch.nn.Linear] = {}
    trunk = getattr(model.llm, "model", None)
    if quant is not None and trunk is not None:
        quantized = {id(m.weight): m for _, m in quantizable_linears(trunk) if not m.weight.requires_grad}
    parts = {"encoder": 0, "llm": 0, "other_frozen": 0, "trainable": 0}
    backbone_of = {id(p): name for name in ("encoder", "llm") if hasattr(getattr(model, name), "frozen_dtype")
                   for p in getattr(model, name).parameters()}
    for p in model.parameters():
        if p.requires_grad:
            parts["trainable"] += p.numel() * 4
        elif id(p) in quantized:
            linear = quantized[id(p)]
            parts["llm"] += quant.weight_bytes(linear.out_features, linear.in_features)
        elif id(p) in backbone_of:
            parts[backbone_of[id(p)]] += p.numel() * element
        else:
            parts["other_frozen"] += p.numel() * p.element_size()
    return WeightBytes(option, **parts)


def full_size_model(choices: dict[str, str], overrides: Sequence[str] = (),
                    conf_dir: str | Path | None = None) -> PneumoLLM:
    """A configuration built full size on the meta device (pretrained backbones as their architectures)."""
    cfg = compose_model_config(choices, conf_dir=conf_dir)
    cfg = compose_model_config(choices, [*offline_architecture_overrides(cfg), *overrides], conf_dir)
    return build_model(cfg, device="meta")


def bytes_table(model: PneumoLLM) -> str:
    """Markdown: the weights' bytes under every ``WEIGHT_OPTIONS`` entry and the cards they fit."""
    gb = lambda n: f"{n / 1e9:.2f}"
    from pneumollm.utils.markdown import markdown_table

    header = ["frozen weights as", "encoder GB", "LLM trunk GB", "other frozen GB", "frozen GB",
              "trainable + grads + AdamW GB", "total GB", *(f"{c} GB card" for c in CARD_GIB)]
    rows = []
    for option in WEIGHT_OPTIONS:
        b = weight_bytes(model, option)
        rows.append([option, gb(b.encoder), gb(b.llm), gb(b.other_frozen), gb(b.frozen), gb(b.training), gb(b.total),
                     *("fits" if b.fits(c) else "no" for c in CARD_GIB)])
    return markdown_table(header, rows, align=["left"] + ["right"] * (len(header) - 1))
