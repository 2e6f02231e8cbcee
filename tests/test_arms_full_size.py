"""Slow: every arm's full size (random weights) runs one training step on two films on the CPU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from transformers import CLIPModel

from pneumollm.models.registry import arm_entry, arm_names
from pneumollm.models.tiny_text import build_tiny_clip_tokenizer, clip_vit_l14_config
from pneumollm.paths import conf_dir

CONFIG_DIR = conf_dir() / "model"
CPU_ARMS = [arm for arm in arm_names() if arm_entry(arm).family != "llm"]  # a 7B LLM cannot step on the CPU
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def random_clip_l14() -> CLIPModel:
    torch.manual_seed(0)
    return CLIPModel(clip_vit_l14_config()).eval()


@pytest.mark.parametrize("arm", CPU_ARMS)
def test_full_size_arm_takes_a_training_step(arm: str, request: pytest.FixtureRequest) -> None:
    full = OmegaConf.load(CONFIG_DIR / f"full_{arm}.yaml")
    extra = {}
    if arm_entry(arm).family == "clip":  # random ViT-L/14 weights; the tiny tokenizer's ids fit CLIP's vocabulary
        full = OmegaConf.masked_copy(full, [k for k in full if k not in ("clip", "tokenizer")])
        extra = {"clip": request.getfixturevalue("random_clip_l14"), "tokenizer": build_tiny_clip_tokenizer()}
    torch.manual_seed(0)
    model = instantiate(full, _convert_="object", **extra)
    images = torch.rand(2, 1, 224, 224)
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    logits = model(images)
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()
    if params:
        F.binary_cross_entropy_with_logits(logits, torch.eye(2)).backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
