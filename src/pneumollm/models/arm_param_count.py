"""Full-size parameter counts of the comparison arms, built on the meta device (no memory, no download).

``pneumollm-arm-param-count`` (``pneumollm.cli.arm_param_count``) prints each arm's trainable and total parameters
next to the paper's L-para column (Tables 2 and 3). Every arm is built from the ``full`` entry of its
``conf/model/<arm>.yaml``; the CLIP arms get a ViT-L/14 CLIPModel built from a built-in config and the
tiny tokenizer (tokens only shape buffers here, they never run).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from transformers import CLIPModel

from pneumollm.config import register_resolvers
from pneumollm.models.base import ImageClassifier
from pneumollm.models.param_count import build_model, offline_architecture_overrides
from pneumollm.models.tiny_text import build_tiny_clip_tokenizer, build_tiny_llama_tokenizer, clip_vit_l14_config
from pneumollm.paths import conf_dir
from pneumollm.utils.markdown import markdown_table

DEFAULT_CONFIG_DIR = conf_dir() / "model"

# arm -> (paper row, L-para in millions from the paper's Tables 2 and 3; None where the paper shows "-").
PAPER_ROWS: dict[str, tuple[str, float | None]] = {
    "resnet50": ("ResNet", 25.56),
    "vit_b16": ("ViT", 88.30),
    "swin_t": ("Swin Transformer", 28.29),
    "conformer": ("Conformer", 23.25),
    "convnext_b": ("ConvNeXt", 88.59),
    "dinov2_vits14": ("DINOv2", 22.06),
    "vapformer": ("VAPFormer", 1.20),
    "clip_zero_shot": ("Zero-Shot CLIP", None),
    "clip_linear_probe": ("Linear Probe CLIP", 0.0008),
    "clip_coop": ("CoOp", 0.003),
    "clip_cocoop": ("CoCoOp", 0.078),
}
CLIP_ARMS = frozenset({"clip_zero_shot", "clip_linear_probe", "clip_coop", "clip_cocoop"})
# Question-answering arms on a frozen LLM (Tables 3 and 5), built with random weights and the tiny Llama tokenizer.
# Kept apart from PAPER_ROWS, whose full sizes tests/test_arms_full_size.py steps on the CPU (a 7B LLM cannot).
LLM_ARM_ROWS: dict[str, tuple[str, float | None]] = {"lavin": ("LaVIN", 3.77), "blip2": ("BLIP2", 107.13)}
ARM_ROWS = {**PAPER_ROWS, **LLM_ARM_ROWS}
# Overrides that rebuild an end-to-end arm as it was published (ImageNet-1k head; DINOv2 at 518 px without
# a head), the counting convention the paper's Table 2 appears to follow.
PUBLISHED_FORM: dict[str, dict] = {
    "resnet50": {"num_classes": 1000},
    "vit_b16": {"num_classes": 1000},
    "swin_t": {"num_classes": 1000},
    "conformer": {"num_classes": 1000},
    "convnext_b": {"num_classes": 1000},
    "dinov2_vits14": {"num_classes": 0, "model_kwargs": {"img_size": 518}},
}


@dataclass(frozen=True)
class ArmCount:
    arm: str
    paper_row: str
    paper_millions: float | None
    trainable: int
    total: int
    published: int | None = None


def build_full_on_meta(arm: str, config_dir: Path = DEFAULT_CONFIG_DIR, **overrides: object) -> ImageClassifier:
    """The ``full`` variant of ``conf/model/<arm>.yaml`` (with ``overrides``), every tensor on the meta device."""
    path = Path(config_dir) / f"{arm}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no model config {str(path)!r} for arm {arm!r}")
    register_resolvers()  # the prompts and answers resolve for the binary task when no data node is given
    full = OmegaConf.load(path).full
    if arm in CLIP_ARMS:
        full = OmegaConf.masked_copy(full, [k for k in full if k not in ("clip", "tokenizer")])
        overrides["tokenizer"] = build_tiny_clip_tokenizer()
    if arm in LLM_ARM_ROWS:
        full = OmegaConf.masked_copy(full, [k for k in full if k != "tokenizer"])
        overrides.update(vision={"pretrained": False}, llm={"pretrained": False},
                         tokenizer=build_tiny_llama_tokenizer())
    with torch.device("meta"):
        if arm in CLIP_ARMS:
            overrides["clip"] = CLIPModel(clip_vit_l14_config())
        return instantiate(full, _convert_="object", **overrides)


def count_arm(arm: str, config_dir: Path = DEFAULT_CONFIG_DIR) -> ArmCount:
    """Trainable and total parameter counts of one arm's full size."""
    model = build_full_on_meta(arm, config_dir)
    row, paper = ARM_ROWS.get(arm, (arm, None))
    published = None
    if arm in PUBLISHED_FORM:
        published = build_full_on_meta(arm, config_dir, **PUBLISHED_FORM[arm]).total_parameter_count()
    return ArmCount(arm, row, paper, model.trainable_parameter_count(), model.total_parameter_count(), published)


def full_size_trainable(arm: str, conf_dir: Path = DEFAULT_CONFIG_DIR.parent) -> int | None:
    """Trainable parameters of the named table row ``arm`` at full size, built on the meta device.

    Comparison arms are built from their model config; every other row from ``conf/arm/<arm>.yaml`` composed
    with ``size=full`` (pretrained backbones as their random architectures). None for a name that is no row.
    """
    if arm in ARM_ROWS:
        return build_full_on_meta(arm, Path(conf_dir) / "model").trainable_parameter_count()
    if not (Path(conf_dir) / "arm" / f"{arm}.yaml").is_file():
        return None
    from hydra import compose, initialize_config_dir

    register_resolvers()
    overrides = [f"arm={arm}", "size=full"]
    with initialize_config_dir(str(Path(conf_dir).resolve()), version_base=None):
        cfg = compose("train", overrides=overrides)
        cfg = compose("train", overrides=[*overrides, *offline_architecture_overrides(cfg)])
    return build_model(cfg, device="meta").trainable_parameter_count()


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
