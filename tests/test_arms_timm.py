"""timm arms: local checkpoints load into the tiny and full layouts, with a fresh two-class head."""

from __future__ import annotations

import pytest
import timm
import torch

from pneumollm.models.arms.timm_classifier import TimmClassifier

TINY_RESNET = {"layers": [1, 1, 1, 1], "channels": [4, 8, 16, 32], "stem_type": "deep", "stem_width": 4}


def test_checkpoint_path_loads_imagenet_weights_and_keeps_a_fresh_head(tmp_path) -> None:
    torch.manual_seed(0)
    released = timm.create_model("resnet50", num_classes=1000, **TINY_RESNET)
    path = tmp_path / "resnet50_tiny.pth"
    torch.save(released.state_dict(), path)

    model = TimmClassifier("resnet50", num_classes=2, checkpoint_path=str(path), model_kwargs=TINY_RESNET)
    assert torch.equal(model.backbone.layer2[0].conv2.weight, released.layer2[0].conv2.weight)
    assert model.backbone.fc.weight.shape == (2, 128)


def test_missing_checkpoint_is_named(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nothing\.pth"):
        TimmClassifier("resnet50", checkpoint_path=str(tmp_path / "nothing.pth"), model_kwargs=TINY_RESNET)


def test_dinov2_runs_at_224_pixels() -> None:
    model = TimmClassifier("vit_small_patch14_dinov2",
                           model_kwargs={"img_size": 224, "embed_dim": 32, "depth": 1, "num_heads": 2}).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 1, 224, 224)).shape == (1, 2)
    assert model.backbone.patch_embed.grid_size == (16, 16)


def test_a_checkpoint_missing_a_tensor_is_refused_not_left_at_random(tmp_path) -> None:
    from pneumollm.models.components.pretrained import WeightsMismatchError

    state = timm.create_model("resnet50", num_classes=1000, **TINY_RESNET).state_dict()
    state.pop("layer2.0.conv2.weight")
    torch.save(state, tmp_path / "resnet50_tiny.pth")
    with pytest.raises(WeightsMismatchError, match=r"1 missing.*missing layer2\.0\.conv2\.weight"):
        TimmClassifier("resnet50", num_classes=2, checkpoint_path=str(tmp_path / "resnet50_tiny.pth"),
                       model_kwargs=TINY_RESNET)
