"""Every comparison-arm YAML builds its tiny size and trains one step, changing only what should train."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pneumollm.models.base import ImageClassifier
from pneumollm.models.registry import arm_entry, arm_names
from tests.helpers import build_model_config, compose_train

# arm -> predicate on parameter names that must be the trainable ones (None: every parameter trains).
TRAINABLE = {
    "resnet50": None,
    "vit_b16": None,
    "swin_t": None,
    "convnext_b": None,
    "dinov2_vits14": None,
    "conformer": None,
    "vapformer": lambda n: n in {"visual_prompts", "attribute_prompts", "global_prompt"} or n.startswith("head."),
    "clip_zero_shot": lambda n: False,
    "clip_linear_probe": lambda n: n.startswith("probe."),
    "clip_coop": lambda n: n == "prompt_learner.ctx",
    "clip_cocoop": lambda n: n == "prompt_learner.ctx" or n.startswith("prompt_learner.meta_net."),
}


pytestmark = pytest.mark.usefixtures("tiny_cache_one_thread")  # tests/conftest.py


def test_every_registered_arm_says_what_should_train() -> None:
    # LaVIN and BLIP-2 (family "llm") have their own files: tests/test_arms_lavin.py, test_arms_blip2.py
    assert set(TRAINABLE) == {arm for arm in arm_names() if arm_entry(arm).family != "llm"}


def build_arm(arm: str, size: str = "tiny") -> ImageClassifier:
    return build_model_config(arm, size)


def train_one_step(model: ImageClassifier, images: torch.Tensor, labels: torch.Tensor) -> None:
    """The trainer's default recipe: BCE on the two logits against one-hot targets, AdamW on trainables."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    model.train()
    loss = F.binary_cross_entropy_with_logits(model(images), F.one_hot(labels, 2).float())
    loss.backward()
    optimizer.step()


@pytest.mark.parametrize("arm", sorted(TRAINABLE))
def test_tiny_arm_trains_only_its_intended_parameters(arm: str) -> None:
    torch.manual_seed(0)
    model = build_arm(arm)
    assert isinstance(model, ImageClassifier)
    images, labels = torch.rand(3, 1, 224, 224), torch.tensor([0, 1, 1])

    model.eval()
    with torch.no_grad():
        logits, features = model(images), model.extract_features(images)
    assert logits.shape == (3, 2) and torch.isfinite(logits).all()
    assert features.dim() == 2 and features.shape[0] == 3 and torch.isfinite(features).all()

    names = {n for n, p in model.named_parameters() if p.requires_grad}
    intended = TRAINABLE[arm]
    expected = {n for n, _ in model.named_parameters() if intended is None or intended(n)}
    assert names == expected

    if not names:  # zero-shot: only evaluated
        return
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_one_step(model, images, labels)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed <= names, f"frozen parameters changed: {sorted(changed - names)[:5]}"
    if intended is None:  # end to end: from the stem to the head (zero-initialised branches may wait a step)
        ordered = [n for n, _ in model.named_parameters()]
        assert ordered[0] in changed and ordered[-1] in changed
    else:
        assert changed == names  # parameter-efficient arms: every trainable tensor moves


@pytest.mark.parametrize("arm", ["vapformer", "clip_coop"])
def test_frozen_backbones_stay_in_eval_mode_when_training(arm: str) -> None:
    model = build_arm(arm).train()
    frozen = [m for m in model.modules() if any(True for _ in m.parameters(recurse=False))
              and not any(p.requires_grad for p in m.parameters(recurse=False))]
    assert frozen and not any(m.training for m in frozen)


def test_size_name_selects_the_full_variant_config(tmp_path: Path) -> None:
    from hydra.core.hydra_config import HydraConfig

    cfg = compose_train([f"paths.root_dir={tmp_path}", "arm=dinov2_vits14", "size=full"], run_dir=tmp_path / "run")
    assert cfg.size_name == "full" and HydraConfig.get().runtime.choices.model == "full_dinov2_vits14"
    assert cfg.model.model_kwargs.img_size == 224 and "embed_dim" not in cfg.model.model_kwargs


@pytest.mark.parametrize("arm", [*sorted(TRAINABLE), "lavin", "blip2"])
def test_forward_with_features_is_forward_and_extract_features_in_one(arm: str) -> None:
    torch.manual_seed(0)
    model = build_arm(arm).eval()
    images = torch.rand(2, 1, 224, 224)
    with torch.no_grad():
        logits, features = model.forward_with_features(images)
        torch.testing.assert_close(logits, model(images))
        torch.testing.assert_close(features, model.extract_features(images))
