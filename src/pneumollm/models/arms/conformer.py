"""Conformer (Peng et al. 2021, "Conformer: local features coupling global representations"), Table 2.

timm has no Conformer, so the network is written here by hand from the paper's description and the
published configuration. A CNN branch (ResNet bottlenecks) and a transformer branch (ViT blocks) run side
by side from a shared convolutional stem and exchange features in every stage through Feature Coupling
Units: *down* (CNN -> tokens: 1x1 conv, average pooling to the patch grid, LayerNorm, GELU) and *up*
(tokens -> CNN: 1x1 conv, BatchNorm, ReLU, nearest up-sampling). Each branch ends in its own classifier;
at test time the two heads' logits are averaged.

Layout (Conformer-Ti: ``patch_size=16``, ``channel_ratio=1``, ``embed_dim=384``, ``num_heads=6``,
``stage_depths=(4, 4, 4)`` = depth 12): stem (7x7/2 conv, BN, ReLU, 3x3/2 max-pool, 1/4 resolution);
stage 1 = one bottleneck + the patch embedding (a ``patch_size/4`` strided conv on the stem) + one ViT
block; then the coupled blocks: 3 at 1/4 resolution, 4 at 1/8 (the first strided), 4 at 1/16 (the first
strided), the last with a strided fusion bottleneck (1/32). The token grid stays at ``224/patch_size``.
Module names follow the authors' release so that their checkpoints load with ``checkpoint_path``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import nn

from pneumollm.models.base import ImageClassifier, InputNormalizer
from pneumollm.models.registry import register_arm

BOTTLENECK_EXPANSION = 4
_BatchNorm = partial(nn.BatchNorm2d, eps=1e-6)
_LayerNorm = partial(nn.LayerNorm, eps=1e-6)


class ConvBlock(nn.Module):
    """ResNet bottleneck; optionally adds the transformer branch's map before its 3x3 conv."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, res_conv: bool = False) -> None:
        super().__init__()
        mid = out_channels // BOTTLENECK_EXPANSION
        self.conv1 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn1 = _BatchNorm(mid)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, bias=False)
        self.bn2 = _BatchNorm(mid)
        self.act2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(mid, out_channels, 1, bias=False)
        self.bn3 = _BatchNorm(out_channels)
        self.act3 = nn.ReLU(inplace=True)
        self.res_conv = res_conv
        if res_conv:
            self.residual_conv = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
            self.residual_bn = _BatchNorm(out_channels)

    def forward(self, x: torch.Tensor, from_tokens: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (block output, the 3x3 conv's activation that feeds the down coupling unit)."""
        residual = x
        h = self.act1(self.bn1(self.conv1(x)))
        mid = self.act2(self.bn2(self.conv2(h if from_tokens is None else h + from_tokens)))
        out = self.bn3(self.conv3(mid))
        if self.res_conv:
            residual = self.residual_bn(self.residual_conv(residual))
        return self.act3(out + residual), mid


class FCUDown(nn.Module):
    """Feature coupling CNN -> transformer: 1x1 conv, pool to the patch grid, LayerNorm, GELU; keeps CLS."""

    def __init__(self, in_channels: int, embed_dim: int, dw_stride: int) -> None:
        super().__init__()
        self.conv_project = nn.Conv2d(in_channels, embed_dim, 1)
        self.sample_pooling = nn.AvgPool2d(dw_stride, dw_stride)
        self.ln = _LayerNorm(embed_dim)
        self.act = nn.GELU()

    def forward(self, feature_map: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        patches = self.sample_pooling(self.conv_project(feature_map)).flatten(2).transpose(1, 2)
        return torch.cat([tokens[:, :1], self.act(self.ln(patches))], dim=1)


class FCUUp(nn.Module):
    """Feature coupling transformer -> CNN: drop CLS, 1x1 conv, BatchNorm, ReLU, nearest up-sampling."""

    def __init__(self, embed_dim: int, out_channels: int, up_stride: int) -> None:
        super().__init__()
        self.up_stride = up_stride
        self.conv_project = nn.Conv2d(embed_dim, out_channels, 1)
        self.bn = _BatchNorm(out_channels)
        self.act = nn.ReLU(inplace=True)

    def forward(self, tokens: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
        b, _, c = tokens.shape
        grid = tokens[:, 1:].transpose(1, 2).reshape(b, c, grid_h, grid_w)
        grid = self.act(self.bn(self.conv_project(grid)))
        return F.interpolate(grid, size=(grid_h * self.up_stride, grid_w * self.up_stride))


class ConvTransBlock(nn.Module):
    """One coupled stage: bottleneck, down unit, ViT block, up unit, fusion bottleneck."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        stride: int,
        res_conv: bool,
        dw_stride: int,
        embed_dim: int,
        num_heads: int,
        mlp_ratio: float,
        qkv_bias: bool,
        drop_path: float,
        last_fusion: bool,
    ) -> None:
        super().__init__()
        mid = out_channels // BOTTLENECK_EXPANSION
        self.dw_stride = dw_stride
        self.cnn_block = ConvBlock(in_channels, out_channels, stride=stride, res_conv=res_conv)
        self.fusion_block = (ConvBlock(out_channels, out_channels, stride=2, res_conv=True) if last_fusion
                             else ConvBlock(out_channels, out_channels))
        self.squeeze_block = FCUDown(mid, embed_dim, dw_stride)
        self.expand_block = FCUUp(embed_dim, mid, dw_stride)
        self.trans_block = Block(embed_dim, num_heads, mlp_ratio, qkv_bias=qkv_bias, drop_path=drop_path,
                                 norm_layer=_LayerNorm)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, mid = self.cnn_block(x)
        tokens = self.trans_block(self.squeeze_block(mid, tokens) + tokens)
        h, w = mid.shape[2] // self.dw_stride, mid.shape[3] // self.dw_stride
        x, _ = self.fusion_block(x, self.expand_block(tokens, h, w))
        return x, tokens


class ConformerNet(nn.Module):
    """The two-branch network; returns the CNN head's and the transformer head's logits."""

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        patch_size: int = 16,
        stem_channels: int = 64,
        base_channels: int = 64,
        channel_ratio: float = 1.0,
        embed_dim: int = 384,
        stage_depths: Sequence[int] = (4, 4, 4),
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if patch_size % 16 != 0:
            raise ValueError(f"Conformer needs a patch_size divisible by 16 (got {patch_size})")
        if len(stage_depths) != 3 or min(stage_depths) < 1:
            raise ValueError(f"stage_depths must be three positive block counts (got {tuple(stage_depths)})")
        depth = sum(stage_depths)
        dw_stride = patch_size // 4
        channels = [int(base_channels * channel_ratio * m) for m in (1, 2, 4)]
        drop_paths = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]

        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.conv1 = nn.Conv2d(in_chans, stem_channels, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_channels)
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.conv_1 = ConvBlock(stem_channels, channels[0], res_conv=True)
        self.trans_patch_conv = nn.Conv2d(stem_channels, embed_dim, dw_stride, stride=dw_stride)
        self.trans_1 = Block(embed_dim, num_heads, mlp_ratio, qkv_bias=qkv_bias, drop_path=drop_paths[0],
                             norm_layer=_LayerNorm)

        # Blocks 2..depth, named conv_trans_<i> as in the authors' release.
        index, in_channels = 2, channels[0]
        for group, (n_blocks, out_channels) in enumerate(zip(stage_depths, channels)):
            n_coupled = n_blocks - 1 if group == 0 else n_blocks
            for k in range(n_coupled):
                first_strided = group > 0 and k == 0
                block = ConvTransBlock(
                    in_channels, out_channels, stride=2 if first_strided else 1, res_conv=first_strided,
                    dw_stride=dw_stride // 2**group, embed_dim=embed_dim, num_heads=num_heads,
                    mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop_path=drop_paths[index - 1],
                    last_fusion=index == depth,
                )
                self.add_module(f"conv_trans_{index}", block)
                index, in_channels = index + 1, out_channels
        self.depth = depth

        self.pooling = nn.AdaptiveAvgPool2d(1)
        self.conv_cls_head = nn.Linear(channels[2], num_classes)
        self.trans_norm = nn.LayerNorm(embed_dim)
        self.trans_cls_head = nn.Linear(embed_dim, num_classes)
        self.num_features = channels[2] + embed_dim
        self.apply(_init_weights)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled CNN features [B, C] and the normalised CLS token [B, D]."""
        stem = self.maxpool(self.act1(self.bn1(self.conv1(images))))
        x, _ = self.conv_1(stem)
        tokens = self.trans_patch_conv(stem).flatten(2).transpose(1, 2)
        tokens = self.trans_1(torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1))
        for i in range(2, self.depth + 1):
            x, tokens = getattr(self, f"conv_trans_{i}")(x, tokens)
        return self.pooling(x).flatten(1), self.trans_norm(tokens[:, 0])

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        conv_features, cls_token = self.forward_features(images)
        return self.conv_cls_head(conv_features), self.trans_cls_head(cls_token)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    elif isinstance(module, (nn.LayerNorm, nn.BatchNorm2d)):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def load_conformer_checkpoint(net: ConformerNet, checkpoint_path: str | Path) -> list[str]:
    """Load a released Conformer checkpoint into ``net``; heads whose shape differs are left fresh.

    Returns the names of the skipped head tensors. Any other mismatch raises with the file's name.
    """
    path = Path(checkpoint_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"Conformer checkpoint {str(checkpoint_path)!r} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    own = net.state_dict()
    skipped = [k for k, v in state.items() if k in own and own[k].shape != v.shape and "cls_head" in k]
    for key in skipped:
        del state[key]
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise ValueError(f"Conformer checkpoint {str(path)!r} does not fit this configuration: {err}") from err
    missing = [k for k in missing if k not in skipped]
    if missing or unexpected:
        raise ValueError(
            f"Conformer checkpoint {str(path)!r} does not fit this configuration: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    return skipped


@register_arm("conformer", published={"num_classes": 1000})
class ConformerClassifier(ImageClassifier):
    """Conformer trained end to end; ``forward`` averages the CNN and transformer heads' logits.

    The authors train each head with its own loss (summed); ``head_logits`` returns both so a training
    loop can do the same. Through ``forward`` alone, the loss trains the averaged logits.
    ``checkpoint_path`` loads a released (ImageNet) checkpoint, keeping fresh ``num_classes`` heads.
    """

    def __init__(
        self,
        num_classes: int = 2,
        patch_size: int = 16,
        stem_channels: int = 64,
        base_channels: int = 64,
        channel_ratio: float = 1.0,
        embed_dim: int = 384,
        stage_depths: Sequence[int] = (4, 4, 4),
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.1,
        checkpoint_path: str | None = None,
        normalization: str = "imagenet",
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.normalize = InputNormalizer(normalization)
        self.net = ConformerNet(
            num_classes=num_classes, patch_size=patch_size, stem_channels=stem_channels,
            base_channels=base_channels, channel_ratio=channel_ratio, embed_dim=embed_dim,
            stage_depths=tuple(stage_depths), num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
            drop_path_rate=drop_path_rate,
        )
        if checkpoint_path:
            load_conformer_checkpoint(self.net, checkpoint_path)

    def head_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of the CNN head and of the transformer head, each [B, num_classes]."""
        return self.net(self.normalize(images))

    def forward_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The pooled CNN features [B, C] and the normalised CLS token [B, D] that the two heads read."""
        return self.net.forward_features(self.normalize(images))

    def forward_head(self, features: tuple[torch.Tensor, torch.Tensor], pre_logits: bool = False) -> torch.Tensor:
        """The mean of the two heads' logits; ``pre_logits``: both heads' inputs side by side [B, C + D]."""
        if pre_logits:
            return torch.cat(features, dim=1)
        conv_features, cls_token = features
        return (self.net.conv_cls_head(conv_features) + self.net.trans_cls_head(cls_token)) / 2
