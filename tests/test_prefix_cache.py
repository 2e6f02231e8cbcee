"""The frozen-prefix feature cache: the same results as without it, used only where valid, keyed by all that
decides the features, shared across folds."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from torch import nn

from pneumollm.errors import ConfigError
from pneumollm.models.base import FrozenPrefix, ImageClassifier
from pneumollm.training.prefix_cache import PrefixFeatureCache, plan_prefix_cache, prefix_key
from pneumollm.training.run import run_fold
from tests.helpers import build_model_config, compose_train

BASE = ["data=manifest", "lungs=none", "trainer=cpu", "logger=none", "data.progress=false",
        "data.preprocess_workers=1", "data.num_folds=3", "data.batch_size=8", "callbacks.progress=null",
        "trainer.max_epochs=3"]


@pytest.fixture(scope="module")
def manifest(toy_cohort) -> Path:
    return toy_cohort(n_patients=15, films_per_patient=1, size=64)


def _run(manifest: Path, root: Path, *extra: str) -> dict:
    cfg = compose_train([*BASE, f"data.source.manifest={manifest}", f"paths.root_dir={root}", *extra],
                        run_dir=root / "run")
    return run_fold(cfg)


def _probs(root: Path) -> dict[str, float]:
    with (root / "run/predictions.csv").open() as handle:
        return {r["image_id"]: float(r["prob"]) for r in csv.DictReader(handle)}


@pytest.mark.parametrize("arm", ["arm=baseline", "arm=clip_linear_probe", "arm=clip_coop"])
def test_cached_and_uncached_runs_give_the_same_results(manifest: Path, tmp_path: Path, arm: str,
                                                         tiny_cache_one_thread) -> None:
    plain = _run(manifest, tmp_path / "plain", arm, "feature_cache=off")
    cached = _run(manifest, tmp_path / "cached", arm, "feature_cache=on")
    assert plain["feature_cache"] is None and cached["feature_cache"]
    a, b = _probs(tmp_path / "plain"), _probs(tmp_path / "cached")
    assert a.keys() == b.keys()
    assert max(abs(a[k] - b[k]) for k in a) < 1e-5
    for key in ("test/sensitivity", "test/specificity", "test/accuracy", "test/auc"):
        assert cached[key] == pytest.approx(plain[key], abs=1e-3), key


def test_the_cache_is_shared_by_the_folds_and_refused_with_adapters(manifest: Path, tmp_path: Path, capfd,
                                                                    tiny_cache_one_thread) -> None:
    _run(manifest, tmp_path, "arm=baseline", "data.fold=0")
    first = capfd.readouterr().err
    _run(manifest, tmp_path, "arm=baseline", "data.fold=1")
    second = capfd.readouterr().err
    assert "15 films from the cache (15 computed now" in first
    assert "15 films from the cache (0 computed now" in second
    assert _run(manifest, tmp_path / "adapters", "arm=adapter")["feature_cache"] is None  # auto: not valid here
    with pytest.raises(ConfigError, match="PneumoLLM has no frozen part before its first trainable one"):
        _run(manifest, tmp_path / "on", "arm=adapter", "feature_cache=on")


class _Toy(ImageClassifier):
    def __init__(self, dropout: float = 0.0, seed: int = 0, scale: float = 1.0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.stem = nn.Sequential(nn.Flatten(), nn.Linear(16, 4), nn.Dropout(dropout)).requires_grad_(False)
        self.scale = scale
        self.head = nn.Linear(4, 2)

    def frozen_prefix(self) -> FrozenPrefix:
        return FrozenPrefix(self.stem, {"scale": self.scale})

    def forward_from_prefix(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(x * self.scale), x


def test_a_prefix_with_dropout_or_trainable_weights_is_refused() -> None:
    assert plan_prefix_cache(_Toy(), "auto") is not None and plan_prefix_cache(_Toy(), "off") is None
    assert plan_prefix_cache(_Toy(dropout=0.1), "auto") is None
    with pytest.raises(ConfigError, match="act randomly in training"):
        plan_prefix_cache(_Toy(dropout=0.1), "on")
    toy = _Toy()
    toy.stem[1].weight.requires_grad_(True)
    with pytest.raises(ConfigError, match="trainable parameters"):
        plan_prefix_cache(toy, "on")
    with pytest.raises(ConfigError, match="has no frozen part"):
        plan_prefix_cache(build_model_config("timm_resnet18"), "on")


def test_the_key_follows_weights_settings_device_precision_and_preprocessing() -> None:
    cpu = torch.device("cpu")

    def key(model: _Toy, **kw) -> str:
        args = {"device": cpu, "precision": "32-true", "extra": {"preprocessing": "p1"}, **kw}
        return prefix_key(model.frozen_prefix(), **args)

    base = key(_Toy())
    assert key(_Toy()) == base  # the same prefix, the same key
    assert key(_Toy(seed=1)) != base  # other weights
    assert key(_Toy(scale=2.0)) != base  # another setting
    assert key(_Toy(), precision="bf16-mixed") != base
    assert key(_Toy(), device=torch.device("meta")) != base
    assert key(_Toy(), extra={"preprocessing": "p2"}) != base


def test_missing_films_are_computed_and_saved_once(tmp_path: Path) -> None:
    model = _Toy()
    images = torch.randint(0, 255, (5, 1, 4, 4), dtype=torch.uint8)
    cache = PrefixFeatureCache(tmp_path, "k")
    features = cache.features(model.stem, list("abcde"), images, device=torch.device("cpu"), batch_size=2,
                              progress=False)
    expected = model.stem.eval()(images.float() / 255.0)
    torch.testing.assert_close(features, expected)
    cache.save()
    again = PrefixFeatureCache(tmp_path, "k")
    assert set(again.store) == set("abcde") and again.added == 0
    more = torch.cat([images, images[:1]])
    again.features(model.stem, [*"abcde", "f"], more, device=torch.device("cpu"), batch_size=4, progress=False)
    assert again.added == 1


def test_the_cache_key_covers_the_code_that_picks_and_pools_tokens() -> None:
    from pneumollm.models.components.encoders import ClipVisionEncoder
    from pneumollm.training.prefix_cache import code_files

    encoder = ClipVisionEncoder(pretrained=False, architecture="tiny", multiscale=1, adapter={"enabled": False},
                                frozen_dtype="float32")
    names = {path.name for path in code_files(encoder)}
    assert {"encoders.py", "vision_tokens.py", "hf_vision.py", "base.py"} <= names
