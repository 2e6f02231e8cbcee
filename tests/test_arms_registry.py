"""The arm registry and the classifier contract: every comparison arm is registered once with its configs and
takes its paper row from the paper's tables; forward, features and both follow from two methods."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from pneumollm.models.base import ImageClassifier
from pneumollm.models.registry import arm_entry, arm_label, arm_names, paper_row, register_arm
from pneumollm.paths import conf_dir, paper_results_file
from tests.helpers import compose_train

CONF = conf_dir()


def _comparison_rows() -> list[str]:
    """The conf/arm rows that pick a net of their own (``override /model``) instead of PneumoLLM's parts."""
    rows = []
    for path in sorted((CONF / "arm").glob("*.yaml")):
        defaults = yaml.safe_load(path.read_text()).get("defaults") or []
        if any(isinstance(d, dict) and "override /model" in d for d in defaults):
            rows.append(path.stem)
    return rows


def test_every_comparison_row_is_a_registered_arm_with_a_model_config() -> None:
    assert sorted(arm_names()) == _comparison_rows()
    for arm in arm_names():
        assert all((CONF / "model" / f"{size}_{arm}.yaml").is_file() for size in ("tiny", "full")), arm


def test_arms_list_in_the_papers_row_order() -> None:
    with paper_results_file().open(newline="") as handle:
        order = list(dict.fromkeys(r["arm"] for r in csv.DictReader(handle)))
    arms = arm_names()
    assert arms == sorted(arms, key=order.index)
    assert arms.index("resnet50") < arms.index("vapformer") < arms.index("clip_zero_shot") < arms.index("blip2")


def test_paper_rows_come_from_the_papers_tables() -> None:
    assert paper_row("swin_t").name == "Swin Transformer" and paper_row("swin_t").params_m == 28.29
    assert paper_row("clip_zero_shot").params_m is None  # the paper prints "-"
    # PneumoLLM is "+Adapter+CMTE+Emitter" in Table 6, which gives no L-para: its first row names it
    assert paper_row("pneumollm").name == "PneumoLLM" and paper_row("pneumollm").params_m == 2.70
    assert paper_row("encoder_conv_stem") is None and arm_label("encoder_conv_stem") == "encoder_conv_stem"


@pytest.mark.parametrize(("overrides", "label"), [
    (["arm=swin_t"], "Swin Transformer"),
    (["arm=adapter"], "+Adapter"),
    (["arm=pneumollm"], "PneumoLLM"),
    (["arm=encoder_conv_stem"], "Conv stem"),  # no paper row: the arm file's own label
    ([], "pneumollm"),                         # no arm=: the arm id, as before
])
def test_rows_named_with_arm_are_labelled_by_the_paper(tmp_path: Path, overrides: list[str], label: str) -> None:
    cfg = compose_train([f"paths.root_dir={tmp_path}", "logger=none", *overrides], run_dir=tmp_path / "run")
    assert cfg.experiment.label == label


def test_registering_a_name_twice_or_an_unknown_family_is_refused() -> None:
    with pytest.raises(ValueError, match="registered twice"):
        register_arm("resnet50")(lambda **kw: None)
    with pytest.raises(ValueError, match="unknown arm family"):
        register_arm("x", family="audio")
    with pytest.raises(KeyError, match="no registered arm 'nope'"):
        arm_entry("nope")


class _Toy(ImageClassifier):
    """Mean-pooled films through one linear layer: the body is the pooling, the head the layer."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(1, 2)
        self.bodies = 0

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        self.bodies += 1
        return images.mean(dim=(2, 3))

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return features if pre_logits else self.linear(features)


def test_forward_and_features_derive_from_the_two_methods() -> None:
    toy, images = _Toy(), torch.rand(3, 1, 8, 8)
    features = images.mean(dim=(2, 3))
    torch.testing.assert_close(toy(images), toy.linear(features))
    torch.testing.assert_close(toy.extract_features(images), features)
    toy.bodies = 0
    logits, pre = toy.forward_with_features(images)
    assert toy.bodies == 1  # one pass through the body for both
    torch.testing.assert_close(logits, toy.linear(features))
    torch.testing.assert_close(pre, features)
