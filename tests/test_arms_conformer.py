"""Conformer: two coupled branches, two heads averaged at test time, released checkpoints load."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pneumollm.models.arms.conformer import ConformerClassifier, ConformerNet

TINY = dict(stem_channels=8, base_channels=8, embed_dim=32, num_heads=2, stage_depths=(1, 1, 1), drop_path_rate=0.0)


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(2, 1, 224, 224, generator=torch.Generator().manual_seed(0))


def test_forward_averages_the_cnn_and_transformer_heads(images: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = ConformerClassifier(**TINY).eval()
    with torch.no_grad():
        conv_logits, trans_logits = model.head_logits(images)
        assert not torch.allclose(conv_logits, trans_logits)
        torch.testing.assert_close(model(images), (conv_logits + trans_logits) / 2)
        features = model.extract_features(images)
    assert features.shape == (2, 8 * 4 + 32)  # pooled CNN channels (base x 4) + CLS width


def test_both_heads_and_both_branches_learn_from_the_averaged_loss(images: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = ConformerClassifier(**TINY).train()
    loss = F.binary_cross_entropy_with_logits(model(images), torch.eye(2))
    loss.backward()
    net = model.net
    for name in ("conv_cls_head.weight", "trans_cls_head.weight", "trans_1.attn.qkv.weight", "conv1.weight",
                 "cls_token", "conv_trans_3.squeeze_block.conv_project.weight",
                 "conv_trans_3.expand_block.conv_project.weight"):
        grad = net.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_conformer_ti_matches_the_published_size() -> None:
    with torch.device("meta"):
        ti = ConformerNet(num_classes=1000)
    assert sum(p.numel() for p in ti.parameters()) == 23_524_704  # "23.5 M" in Peng et al. (2021)
    assert ti.depth == 12 and hasattr(ti, "conv_trans_12") and not hasattr(ti, "conv_trans_13")


def test_released_checkpoint_loads_with_fresh_heads(tmp_path, images: torch.Tensor) -> None:
    torch.manual_seed(1)
    released = ConformerNet(num_classes=1000, **TINY)
    path = tmp_path / "conformer_tiny.pth"
    torch.save({"model": released.state_dict()}, path)

    model = ConformerClassifier(checkpoint_path=str(path), **TINY)
    own, theirs = model.net.state_dict(), released.state_dict()
    assert torch.equal(own["trans_1.attn.qkv.weight"], theirs["trans_1.attn.qkv.weight"])
    assert torch.equal(own["conv_trans_3.fusion_block.conv2.weight"], theirs["conv_trans_3.fusion_block.conv2.weight"])
    assert own["conv_cls_head.weight"].shape == (2, 32) and own["trans_cls_head.weight"].shape == (2, 32)


def test_checkpoint_errors_name_the_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing\.pth"):
        ConformerClassifier(checkpoint_path=str(tmp_path / "missing.pth"), **TINY)
    other = ConformerNet(num_classes=2, **{**TINY, "embed_dim": 64})
    path = tmp_path / "wide.pth"
    torch.save(other.state_dict(), path)
    with pytest.raises(ValueError, match=r"wide\.pth"):
        ConformerClassifier(checkpoint_path=str(path), **TINY)


def test_bad_layouts_are_refused() -> None:
    with pytest.raises(ValueError, match="patch_size"):
        ConformerNet(patch_size=8)
    with pytest.raises(ValueError, match="stage_depths"):
        ConformerNet(stage_depths=(4, 4))
