"""Attribution maps (Captum occlusion and integrated gradients) and the explanation PNG."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from pneumollm.inference.explain import (
    FIGURE_DPI,
    FIGURE_INCHES,
    attribution_maps,
    forward_passes,
    write_explanation,
)
from pneumollm.utils.io import current_umask

FAST = {"occlusion": {"window": 8, "stride": 4}, "integrated_gradients": {"n_steps": 8}}
COARSE = {"occlusion": {"window": 56, "stride": 56}, "integrated_gradients": {"n_steps": 3}}


class QuadrantNet(nn.Module):
    """Logits from the mean brightness of the top-left quadrant only; records the mode it ran in."""

    num_classes = 2

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(8.0))
        self.dropout = nn.Dropout(0.5)
        self.modes: list[bool] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        half_h, half_w = images.shape[-2] // 2, images.shape[-1] // 2
        brightness = self.dropout(images[:, 0, :half_h, :half_w]).mean(dim=(1, 2))
        positive = self.gain * (brightness - 0.5)
        return torch.stack([torch.zeros_like(positive), positive], dim=1)


def quadrant_films(batch: int = 3, size: int = 64) -> torch.Tensor:
    """Noisy films with a brighter top-left quadrant (what QuadrantNet counts as disease)."""
    films = torch.rand(batch, 1, size, size, generator=torch.Generator().manual_seed(0)) * 0.3 + 0.2
    films[:, :, : size // 2, : size // 2] += 0.4
    return films


@pytest.mark.parametrize("method", ["occlusion", "integrated_gradients"])
def test_attribution_concentrates_where_the_model_looks(method: str) -> None:
    net = QuadrantNet()
    maps = attribution_maps(net, quadrant_films(), method, **FAST[method])
    assert maps.shape == (3, 64, 64) and maps.dtype == np.float32 and np.isfinite(maps).all()
    positive = np.clip(maps, 0.0, None)
    inside = positive[:, :32, :32].sum(axis=(1, 2)) / positive.sum(axis=(1, 2))
    assert (inside > 0.85).all(), inside  # the quadrant is a quarter of the film
    assert np.abs(maps[:, 40:, 40:]).max() < 1e-6  # far from the quadrant: nothing
    assert net.gain.grad is None  # no gradient left on the weights


def test_integrated_gradients_completeness_in_log_odds() -> None:
    net = QuadrantNet()
    films = quadrant_films(2)
    maps = attribution_maps(net, films, "integrated_gradients", n_steps=16)
    with torch.no_grad():
        gap = (net.eval()(films)[:, 1] - net(torch.zeros_like(films))[:, 1]).numpy()
    np.testing.assert_allclose(maps.sum(axis=(1, 2)), gap, rtol=1e-3)


def test_custom_probability_and_output() -> None:
    net = QuadrantNet()
    films = quadrant_films(2)
    sigmoid = attribution_maps(net, films, "occlusion", probability=lambda logits: (logits[:, 1] / 4).sigmoid(),
                               **FAST["occlusion"])
    softmax = attribution_maps(net, films, "occlusion", **FAST["occlusion"])
    assert sigmoid.shape == softmax.shape == (2, 64, 64)
    assert not np.allclose(sigmoid, softmax)  # the callable is what is attributed
    log_odds = attribution_maps(net, films, "occlusion", output="log_odds", **FAST["occlusion"])
    assert np.clip(log_odds, 0, None)[:, :32, :32].sum() > 0.85 * np.clip(log_odds, 0, None).sum()
    for baseline in ("mean", "blur", 0.1):
        maps = attribution_maps(net, films, "occlusion", baseline=baseline, **FAST["occlusion"])
        assert np.isfinite(maps).all() and np.clip(maps, 0, None)[:, :32, :32].sum() > 0


@pytest.mark.parametrize("method", ["occlusion", "integrated_gradients"])
def test_confident_films_keep_their_map(method: str) -> None:
    """At P = 1.0 in float32 the log-odds still move: a suite loss's probability is turned into exact log-odds."""
    from pneumollm.training.losses import MultiLabelBCELoss, OneHotBCELoss

    net = QuadrantNet()
    with torch.no_grad():
        net.gain.fill_(400.0)  # logit ~100: softmax and sigmoid give exactly 1.0
    films = quadrant_films(2)
    assert (OneHotBCELoss().positive_probability(net(films)) == 1.0).all()
    for loss in (OneHotBCELoss(), MultiLabelBCELoss()):
        maps = attribution_maps(net, films, method, probability=loss.positive_probability, **FAST[method])
        positive = np.clip(maps, 0.0, None)
        assert (positive[:, :32, :32].sum(axis=(1, 2)) > 0.85 * positive.sum(axis=(1, 2))).all()
        assert (positive[:, :32, :32].sum(axis=(1, 2)) > 1.0).all()  # log-odds units, not a saturated p
    flat = attribution_maps(net, films, method, output="probability", **FAST[method])
    assert np.abs(flat).max() < 1e-6  # what a map of p itself shows at saturation


@pytest.mark.parametrize("method", ["occlusion", "integrated_gradients"])
def test_modes_are_restored(method: str) -> None:
    net = QuadrantNet().train()
    net.dropout.eval()  # a submodule deliberately in another mode than its parent keeps it
    before = [m.training for m in net.modules()]
    attribution_maps(net, quadrant_films(1), method, **FAST[method])
    assert [m.training for m in net.modules()] == before
    assert net.modes and not any(net.modes)  # every forward pass ran in eval mode (no dropout)
    net.eval()
    attribution_maps(net, quadrant_films(1), method, **FAST[method])
    assert not any(m.training for m in net.modules())


def test_bad_arguments() -> None:
    net, films = QuadrantNet(), quadrant_films(1)
    with pytest.raises(ValueError, match="unknown attribution method"):
        attribution_maps(net, films, "saliency")
    with pytest.raises(TypeError, match="n_steps"):
        attribution_maps(net, films, "occlusion", n_steps=4)
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        attribution_maps(net, films[:, 0], "occlusion")
    with pytest.raises(ValueError, match="do not fit"):
        attribution_maps(net, films, "occlusion", window=128)
    with pytest.raises(ValueError, match="baseline"):
        attribution_maps(net, films, "occlusion", baseline="grey", **FAST["occlusion"])


def test_forward_passes() -> None:
    assert forward_passes("occlusion") == 1 + 27 * 27  # 16 px windows every 8 px on 224 px
    assert forward_passes("occlusion", 224, 224, window=56, stride=56) == 17
    assert forward_passes("integrated_gradients") == 32


def _tiny_pneumollm() -> nn.Module:
    from pneumollm.models.param_count import build_model, compose_model_config

    torch.manual_seed(0)
    return build_model(compose_model_config({}, []))


def _tiny_resnet() -> nn.Module:
    from tests.helpers import build_model_config

    torch.manual_seed(0)
    return build_model_config("timm_resnet18")


@pytest.mark.parametrize("build", [_tiny_pneumollm, _tiny_resnet], ids=["pneumollm", "timm_resnet18"])
@pytest.mark.parametrize("method", ["occlusion", "integrated_gradients"])
def test_real_arms(build, method: str) -> None:
    net = build().train()
    images = torch.rand(2, 1, 224, 224, generator=torch.Generator().manual_seed(1))
    maps = attribution_maps(net, images, method, batch_size=16, **COARSE[method])
    assert maps.shape == (2, 224, 224) and np.isfinite(maps).all() and np.abs(maps).sum() > 0
    assert net.training and all(p.grad is None for p in net.parameters())


def test_write_explanation(tmp_path) -> None:
    rng = np.random.default_rng(0)
    film = rng.integers(0, 256, (300, 260), dtype=np.uint8)
    image = rng.integers(0, 256, (224, 224), dtype=np.uint8)
    attribution = rng.normal(size=(224, 224)).astype(np.float32)
    outline = np.zeros((224, 224), dtype=bool)
    outline[20:40, 30:60] = True
    expected = (round(FIGURE_INCHES[0] * FIGURE_DPI), round(FIGURE_INCHES[1] * FIGURE_DPI))
    path = write_explanation(tmp_path / "sub" / "film.png", film, (10, 20, 280, 240), image, attribution, 0.873,
                             title="P0001/1.dcm", outline=outline)
    with Image.open(path) as png:
        assert png.format == "PNG" and png.size == expected
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~current_umask()
    flat = write_explanation(tmp_path / "flat.png", film, None, image, np.zeros((224, 224)), 0.0)  # no crop, no signal
    with Image.open(flat) as png:
        assert png.size == expected
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["film.png", "flat.png", "sub"]  # no temporary left
    with pytest.raises(ValueError, match="does not match"):
        write_explanation(tmp_path / "bad.png", film, None, image, np.zeros((100, 100)), 0.5)
