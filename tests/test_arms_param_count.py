"""Full-size arms build on the meta device with the parameter counts documented in docs/arms.md."""

from __future__ import annotations

import pytest
import torch

from pneumollm.cli.arm_param_count import main
from pneumollm.models.arm_param_count import build_full_on_meta, count_arm, format_table, full_size_trainable
from tests.helpers import markdown_rows

# arm -> (trainable, total) of the full size with two classes; see docs/arms.md for the arithmetic.
EXPECTED = {
    "resnet50": (23_512_130, 23_512_130),
    "vit_b16": (85_800_194, 85_800_194),
    "swin_t": (27_520_892, 27_520_892),
    "conformer": (22_883_988, 22_883_988),
    "convnext_b": (87_568_514, 87_568_514),
    "dinov2_vits14": (21_629_570, 21_629_570),
    "vapformer": (1_200_386, 86_999_042),
    "clip_zero_shot": (0, 427_616_513),
    "clip_linear_probe": (769, 427_616_513 + 769),
    "clip_coop": (3_072, 427_616_513 + 3_072),
    "clip_cocoop": (3_072 + 74_544, 427_616_513 + 3_072 + 74_544),
}
# The forms the paper's L-para column counts (ImageNet-1k heads; DINOv2 at 518 px without a head).
PUBLISHED = {"resnet50": 25_557_032, "swin_t": 28_288_354, "convnext_b": 88_591_464, "dinov2_vits14": 22_056_192}


@pytest.mark.parametrize("arm", sorted(EXPECTED))
def test_full_size_counts(arm: str) -> None:
    model = build_full_on_meta(arm)
    assert all(p.device.type == "meta" for p in model.parameters())
    assert (model.trainable_parameter_count(), model.total_parameter_count()) == EXPECTED[arm]


@pytest.mark.parametrize("arm", sorted(PUBLISHED))
def test_published_forms_reproduce_the_papers_l_para(arm: str) -> None:
    count = count_arm(arm)
    assert count.published == PUBLISHED[arm]
    assert round(count.published / 1e6, 2) == count.paper_millions


def test_full_clip_arms_wrap_clip_vit_l14() -> None:
    model = build_full_on_meta("clip_coop")
    config = model.clip.model.config
    assert (config.vision_config.hidden_size, config.vision_config.num_hidden_layers,
            config.vision_config.patch_size, config.projection_dim) == (1024, 24, 14, 768)
    assert model.prompt_learner.ctx.shape == (4, 768)
    assert model.clip.model.logit_scale.device == torch.device("meta")


def test_table_lists_every_arm(capsys) -> None:
    main(["vapformer", "clip_linear_probe"])
    out = capsys.readouterr().out
    rows = [r[:4] for r in markdown_rows(out)]
    assert ["vapformer", "VAPFormer", "1.2", "1,200,386"] in rows
    assert ["clip_linear_probe", "Linear Probe CLIP", "0.0008", "769"] in rows
    assert format_table([]).count("\n") == 1


def test_unknown_arm_is_named_in_the_error() -> None:
    with pytest.raises(FileNotFoundError, match="no_such_arm"):
        build_full_on_meta("no_such_arm")


@pytest.mark.parametrize(("arm", "expected"), [
    ("resnet50", 23_512_130),            # a comparison arm: its model config's full entry
    ("pneumollm", 2_704_000),            # a named PneumoLLM row composed with size=full
    ("pneumollm_no_llm", 517_952),       # Table 4 "w/o LLaMA" (paper 0.52 M)
    ("simplified_pneumollm", 2_691_648),  # Table 5 (paper 2.69 M)
    ("encoder_vit_b16_in21k", 2_468_384),  # Fig. 6a row with ${sized:...} values
    ("m4", None),                        # a sweep-made name that is no conf/arm row
])
def test_full_size_trainable_of_table_rows(arm: str, expected: int | None) -> None:
    assert full_size_trainable(arm) == expected
