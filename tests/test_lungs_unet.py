"""lungs=unet: the module's layout matches the described state dict; loading errors; real-weight accuracy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pneumollm.data.lungs.unet import LungUNet, UNetSegmenter, load_unet_weights
from pneumollm.errors import WeightsNotFoundError
from tests.helpers import shared_path

# Written from ../shared/data/hybridgnet-unet/README.md: (level, input channels, output channels).
LEVELS = [
    ("dconv_down1", 1, 8), ("dconv_down2", 8, 16), ("dconv_down3", 16, 32), ("dconv_down4", 32, 64),
    ("bottleneck", 64, 64),
    ("dconv_up4", 128, 64), ("dconv_up3", 96, 32), ("dconv_up2", 48, 16), ("dconv_up1", 24, 8),
]


def described_state_dict_shapes() -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for level, cin, cout in LEVELS:
        if cin != cout:  # a shortcut 1x1 conv (no bias) + BatchNorm where the width changes
            shapes[f"{level}.skip.0.weight"] = (cout, cin, 1, 1)
            shapes[f"{level}.skip.1.weight"] = shapes[f"{level}.skip.1.bias"] = (cout,)
        shapes[f"{level}.block.0.weight"] = shapes[f"{level}.block.0.bias"] = (cin,)
        shapes[f"{level}.block.2.weight"] = (cout, cin, 3, 3)
        shapes[f"{level}.block.2.bias"] = (cout,)
        shapes[f"{level}.block.3.weight"] = shapes[f"{level}.block.3.bias"] = (cout,)
        shapes[f"{level}.block.5.weight"] = (cout, cout, 3, 3)
        shapes[f"{level}.block.5.bias"] = (cout,)
    shapes["conv_last.weight"] = (4, 8, 1, 1)
    shapes["conv_last.bias"] = (4,)
    return shapes


def test_layout_matches_the_described_state_dict():
    state = LungUNet().state_dict()
    assert {key: tuple(value.shape) for key, value in state.items()} == described_state_dict_shapes()
    assert len(state) == 98
    assert sum(value.numel() for value in state.values()) == 323_414


def test_batchnorm_always_uses_the_input_statistics():
    model = LungUNet()
    assert not any("running" in name or "num_batches" in name for name in model.state_dict())
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        model.train()
        trained = model(x)
        model.eval()
        evaluated = model(x)
    torch.testing.assert_close(trained, evaluated)  # no running statistics: train and eval agree
    assert evaluated.shape == (1, 4, 64, 64)


def test_weights_path_is_required_and_checked(tmp_path):
    with pytest.raises(WeightsNotFoundError, match=r"lungs\.weights="):
        UNetSegmenter(None)
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        UNetSegmenter(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable PyTorch state dict"):
        load_unet_weights(junk)


def test_mismatching_state_dict_is_refused(tmp_path):
    wrong = tmp_path / "wrong.pt"
    torch.save(torch.nn.Conv2d(1, 4, 3).state_dict(), wrong)
    with pytest.raises(ValueError, match="does not match the expected lung U-Net layout"):
        load_unet_weights(wrong)
    partial = tmp_path / "partial.pt"
    state = LungUNet().state_dict()
    state.pop("conv_last.bias")
    torch.save(state, partial)
    with pytest.raises(ValueError, match=r"conv_last\.bias"):
        load_unet_weights(partial)


def test_matching_state_dict_loads_strictly_and_segments_any_film_size(tmp_path):
    torch.manual_seed(0)
    source = LungUNet()
    path = tmp_path / "unet.pt"
    torch.save(source.state_dict(), path)
    loaded = load_unet_weights(path)
    for key, value in source.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)
    segmenter = UNetSegmenter(path, input_size=64)
    film = np.random.default_rng(0).integers(0, 256, (90, 70), dtype=np.uint8)
    assert segmenter.lung_scores(film).shape == (90, 70)
    mask = segmenter(film, "f.dcm")
    assert mask is None or (mask.shape == (90, 70) and mask.dtype == bool)
    with pytest.raises(ValueError, match="multiple of 16"):
        UNetSegmenter(path, input_size=100)


@pytest.fixture(scope="module")
def pretrained() -> UNetSegmenter:
    return UNetSegmenter(shared_path("hybridgnet-unet", "unet.pt"))


@pytest.mark.shared
def test_pretrained_unet_meets_the_targets_on_real_films(pretrained):
    from pneumollm.data.lungs.evaluate import find_pairs, score_film

    pairs, _ = find_pairs(shared_path("openist-lungs"))
    scores = [score_film(image, mask, pretrained)[0] for image, mask in pairs[::14][:20]]
    assert len(scores) == 20
    assert np.mean([s.dice for s in scores]) >= 0.93
    assert np.mean([s.box_iou for s in scores]) >= 0.90
