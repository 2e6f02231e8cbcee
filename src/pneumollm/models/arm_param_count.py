"""Full-size parameter counts of the comparison arms and of every table row, built on the meta device (no memory,
no download).

``pneumollm-arm-param-count`` (``pneumollm.cli.arm_param_count``) prints each registered arm's
(``models.registry``) trainable and total parameters next to the paper's L-para column (Tables 2 and 3). Every
arm is built from its full-size config ``conf/model/full_<arm>.yaml``; the CLIP arms get a ViT-L/14 CLIPModel
built from a built-in config and the tiny tokenizer (tokens only shape buffers here, they never run).
``full_size_row`` counts any table row (``conf/arm/``) at full size for the results tables' full-size columns;
``backbone_rows_table`` lists the backbone comparison's rows (``pneumollm-backbone-sizes --rows``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from transformers import CLIPModel

from pneumollm.config import register_resolvers
from pneumollm.models.backbone_rows import BACKBONE_ROWS, backbone_row
from pneumollm.models.base import ImageClassifier
from pneumollm.models.param_count import PAPER_CHOICES, build_model, offline_architecture_overrides, weight_bytes
from pneumollm.models.pneumollm import PneumoLLM
from pneumollm.models.registry import arm_entry, arm_label, is_arm, paper_row
from pneumollm.models.row_size import GB, RowSize
from pneumollm.models.tiny_text import build_tiny_clip_tokenizer, build_tiny_llama_tokenizer, clip_vit_l14_config
from pneumollm.paths import conf_dir
from pneumollm.utils.markdown import markdown_table

DEFAULT_CONFIG_DIR = conf_dir() / "model"
BF16_BYTES = 2
NF4_OPTION = "nf4+dq trunk"  # param_count.WEIGHT_OPTIONS: what llm.quantization=nf4 builds


@dataclass(frozen=True)
class ArmCount:
    arm: str
    paper_row: str
    paper_millions: float | None
    trainable: int
    total: int
    published: int | None = None


def build_full_on_meta(arm: str, config_dir: Path = DEFAULT_CONFIG_DIR, **overrides: object) -> ImageClassifier:
    """``conf/model/full_<arm>.yaml`` (with ``overrides``) built with every tensor on the meta device."""
    path = Path(config_dir) / f"full_{arm}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no model config {str(path)!r} for arm {arm!r}")
    register_resolvers()  # the prompts and answers resolve for the binary task when no data node is given
    full = OmegaConf.load(path)
    family = arm_entry(arm).family if is_arm(arm) else "image"
    if family == "clip":
        full = OmegaConf.masked_copy(full, [k for k in full if k not in ("clip", "tokenizer")])
        overrides["tokenizer"] = build_tiny_clip_tokenizer()
    if family == "llm":
        full = OmegaConf.masked_copy(full, [k for k in full if k != "tokenizer"])
        overrides.update(vision={"pretrained": False}, llm={"pretrained": False},
                         tokenizer=build_tiny_llama_tokenizer())
    with torch.device("meta"):
        if family == "clip":
            overrides["clip"] = CLIPModel(clip_vit_l14_config())
        return instantiate(full, _convert_="object", **overrides)


def count_arm(arm: str, config_dir: Path = DEFAULT_CONFIG_DIR) -> ArmCount:
    """Trainable and total parameter counts of one arm's full size."""
    model = build_full_on_meta(arm, config_dir)
    row = paper_row(arm)
    published_form = arm_entry(arm).published if is_arm(arm) else {}
    published = None
    if published_form:
        published = build_full_on_meta(arm, config_dir, **published_form).total_parameter_count()
    return ArmCount(arm, row.name if row else arm, row.params_m if row else None, model.trainable_parameter_count(),
                    model.total_parameter_count(), published)


def full_size_model(arm: str, conf_dir: Path = DEFAULT_CONFIG_DIR.parent) -> ImageClassifier | None:
    """The named table row ``arm`` built at full size on the meta device; None for a name that is no row.

    Comparison arms are built from their full-size model config; every other row from ``conf/arm/<arm>.yaml``
    composed with ``size=full`` (pretrained backbones as their random architectures).
    """
    if is_arm(arm):
        return build_full_on_meta(arm, Path(conf_dir) / "model")
    if not (Path(conf_dir) / "arm" / f"{arm}.yaml").is_file():
        return None
    from hydra import compose, initialize_config_dir

    register_resolvers()
    overrides = [f"arm={arm}", "size=full"]
    with initialize_config_dir(str(Path(conf_dir).resolve()), version_base=None):
        cfg = compose("train", overrides=overrides)
        cfg = compose("train", overrides=[*overrides, *offline_architecture_overrides(cfg)])
    return build_model(cfg, device="meta")


def full_size_trainable(arm: str, conf_dir: Path = DEFAULT_CONFIG_DIR.parent) -> int | None:
    """Trainable parameters of the named table row ``arm`` at full size (``full_size_model``); None for a name
    that is no row."""
    model = full_size_model(arm, conf_dir)
    return None if model is None else model.trainable_parameter_count()


def row_size(model: torch.nn.Module) -> RowSize:
    """``model``'s ``RowSize``: PneumoLLM's weights as ``param_count.weight_bytes`` stores them (bf16 backbones;
    nf4 with double quantisation on the trunk's linear layers, as ``llm.quantization=nf4`` builds it), any
    other net's frozen weights at two bytes each (no nf4 option)."""
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if not isinstance(model, PneumoLLM):
        return RowSize(trainable, frozen, frozen * BF16_BYTES, None)
    has_trunk = getattr(model.llm, "model", None) is not None
    return RowSize(trainable, frozen, weight_bytes(model, "bf16/fp16").frozen,
                   weight_bytes(model, NF4_OPTION).frozen if has_trunk else None)


def full_size_row(arm: str, conf_dir: Path = DEFAULT_CONFIG_DIR.parent) -> RowSize | None:
    """The ``RowSize`` of the named table row ``arm`` at full size (``full_size_model``); None for a name that is
    no row."""
    model = full_size_model(arm, conf_dir)
    return None if model is None else row_size(model)


def format_table(counts: list[ArmCount]) -> str:
    """A Markdown table: arm, paper row, paper L-para, our trainable and total counts, published form."""
    rows = []
    for c in counts:
        paper = "-" if c.paper_millions is None else f"{c.paper_millions:g}"
        published = "" if c.published is None else f"{c.published / 1e6:.2f}"
        rows.append([c.arm, c.paper_row, paper, f"{c.trainable:,}", f"{c.trainable / 1e6:.4g}", f"{c.total:,}",
                     published])
    header = ["arm", "paper row", "paper L-para (M)", "trainable (ours)", "trainable (M)", "total (ours)",
              "published form (M)"]
    return markdown_table(header, rows, align=["left", "left"] + ["right"] * 5)


def backbone_rows_table(arms: Sequence[str] | None = None) -> str:
    """Markdown: the backbone comparison's rows (``models/backbone_rows.py``; default: the reference ``pneumollm``
    and every row) at full size: the choice and hub id swapped in, trainable and frozen parameters, frozen GB in
    bf16 and with an nf4 trunk (``RowSize``), on the meta device."""
    rows = []
    for arm in arms or ["pneumollm", *BACKBONE_ROWS]:
        row = backbone_row(arm)
        size = full_size_row(arm)
        if size is None:
            raise ValueError(f"no table row {arm!r}; choose pneumollm or one of {', '.join(BACKBONE_ROWS)}")
        swapped = {row.part: f"full_{row.choice}"} if row else PAPER_CHOICES
        hub = " + ".join(OmegaConf.load(conf_dir() / part / f"{choice}.yaml").name_or_path
                         for part, choice in swapped.items())
        nf4 = "-" if size.frozen_nf4_bytes is None else f"{size.frozen_nf4_bytes / GB:.2f}"
        choices = " ".join(f"{part}={choice}" for part, choice in swapped.items())
        rows.append([arm, arm_label(arm), choices, hub, f"{size.trainable:,}",
                     f"{size.frozen:,}", f"{size.frozen_bf16_bytes / GB:.2f}", nf4])
    header = ["arm", "label", "choice", "hub id", "trainable", "frozen", "frozen bf16 GB", "frozen nf4 GB"]
    return markdown_table(header, rows, align=["left"] * 4 + ["right"] * 4)
