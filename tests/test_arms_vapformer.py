"""VAPFormer: a frozen ViT steered by deep visual/attribute prompts and a carried global prompt token."""

from __future__ import annotations

import pytest
import timm
import torch

from pneumollm.models.arms.vapformer import VAPFormer

TINY_VIT = {"embed_dim": 32, "depth": 2, "num_heads": 2}


def tiny(**kwargs) -> VAPFormer:
    torch.manual_seed(0)
    defaults = dict(num_visual_prompts=4, num_attribute_prompts=2, model_kwargs=TINY_VIT)
    return VAPFormer(**{**defaults, **kwargs})


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(2, 1, 224, 224, generator=torch.Generator().manual_seed(0))


def test_trainable_count_is_prompts_plus_global_token_plus_head() -> None:
    depth, dim = 2, 32
    assert tiny().trainable_parameter_count() == depth * (4 + 2) * dim + dim + (dim * 2 + 2)
    assert tiny(global_prompt=False).trainable_parameter_count() == depth * (4 + 2) * dim + (dim * 2 + 2)
    assert tiny(num_attribute_prompts=0).trainable_parameter_count() == depth * 4 * dim + dim + (dim * 2 + 2)


def test_full_size_lands_on_the_papers_1_20_m() -> None:
    with torch.device("meta"):
        model = VAPFormer()
    assert model.trainable_parameter_count() == 12 * (100 + 30) * 768 + 768 + 768 * 2 + 2 == 1_200_386


@pytest.mark.parametrize("group", ["visual_prompts", "attribute_prompts"])
def test_every_blocks_deep_prompts_steer_the_prediction(group: str, images: torch.Tensor) -> None:
    model = tiny().eval()
    with torch.no_grad():
        base = model(images)
        for block in range(2):
            prompts = getattr(model, group)
            saved = prompts[block].clone()
            prompts[block].add_(1.0)
            assert not torch.equal(model(images), base), f"{group} of block {block} had no effect"
            prompts[block].copy_(saved)


def test_global_prompt_enters_once_and_is_carried(images: torch.Tensor) -> None:
    """The global token is inserted before block 1 only: its value reaches the output through every block."""
    model = tiny().eval()
    with torch.no_grad():
        base = model(images)
        model.global_prompt.add_(1.0)
        assert not torch.equal(model(images), base)


def test_frozen_vit_is_the_unprompted_backbone(images: torch.Tensor) -> None:
    """With no prompts at all, the features are exactly the frozen ViT's own CLS features."""
    model = tiny(num_visual_prompts=0, num_attribute_prompts=0, global_prompt=False).eval()
    with torch.no_grad():
        reference = model.vit.forward_head(model.vit.forward_features(model.normalize(images)), pre_logits=True)
        torch.testing.assert_close(model.extract_features(images), reference)


def test_backbone_loads_a_local_timm_checkpoint(tmp_path) -> None:
    torch.manual_seed(3)
    released = timm.create_model("vit_base_patch16_224", num_classes=1000, **TINY_VIT)
    path = tmp_path / "vit.pth"
    torch.save(released.state_dict(), path)
    model = tiny(checkpoint_path=str(path))
    assert torch.equal(model.vit.blocks[1].attn.qkv.weight, released.blocks[1].attn.qkv.weight)
    assert not any(p.requires_grad for p in model.vit.parameters())


def test_a_non_vit_backbone_is_refused() -> None:
    with pytest.raises(ValueError, match="VisionTransformer"):
        VAPFormer(backbone="resnet18", num_visual_prompts=1, num_attribute_prompts=1)
