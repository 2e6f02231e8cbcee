"""conf/lungs/*.yaml: each node minus ``margin`` instantiates its segmenter."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from pneumollm.data.lungs.base import LungSegmenter
from pneumollm.data.lungs.chexmask import rle_encode
from pneumollm.data.lungs.crop import crop_to_lungs
from pneumollm.data.lungs.phantom import drawn_chest
from pneumollm.data.lungs.unet import LungUNet
from pneumollm.errors import WeightsNotFoundError
from pneumollm.paths import conf_dir

CONF = conf_dir() / "lungs"


def build(name: str, **overrides) -> tuple[LungSegmenter, float]:
    node = OmegaConf.load(CONF / f"{name}.yaml")
    margin = float(node.pop("margin"))
    for key, value in overrides.items():
        node[key] = value
    return instantiate(node, _convert_="object"), margin


def test_every_option_has_a_config_with_a_margin():
    assert {path.stem for path in CONF.glob("*.yaml")} >= {"none", "threshold", "unet", "chexmask"}
    for path in CONF.glob("*.yaml"):
        assert 0.0 <= float(OmegaConf.load(path).margin) <= 0.2, path


def test_threshold_config_crops_a_drawn_chest():
    segmenter, margin = build("threshold")
    assert isinstance(segmenter, LungSegmenter) and segmenter.name == "threshold"
    film, _ = drawn_chest()
    assert crop_to_lungs(film, segmenter, "drawn.png", margin).status == "cropped"


def test_none_config_keeps_the_film():
    segmenter, _ = build("none")
    assert crop_to_lungs(np.zeros((50, 50), np.uint8), segmenter, "a.png").status == "not_cropped"


def test_unet_config_needs_weights(tmp_path):
    with pytest.raises(Exception, match=r"lungs\.weights=") as caught:
        build("unet")
    assert isinstance(caught.value, WeightsNotFoundError) or isinstance(caught.value.__cause__, WeightsNotFoundError)
    weights = tmp_path / "unet.pt"
    torch.save(LungUNet().state_dict(), weights)
    segmenter, _ = build("unet", weights=str(weights))
    assert segmenter.name == "unet"


def test_chexmask_config_reads_a_csv(tmp_path):
    with pytest.raises(Exception, match=r"lungs\.csv="):
        build("chexmask")
    mask = np.zeros((8, 8), bool)
    mask[2:6, 1:3] = True
    path = tmp_path / "db.csv"
    path.write_text(f"Image Index,Left Lung,Right Lung,Height,Width\na.png,{rle_encode(mask)},,8,8\n")
    segmenter, _ = build("chexmask", csv=str(path))
    assert segmenter(np.zeros((8, 8), np.uint8), "x/a.dcm").sum() == 8
